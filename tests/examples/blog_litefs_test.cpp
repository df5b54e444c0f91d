// The blog example (examples/http_service) on real LiteFS (labels `examples` and `litefs`):
// three fwd_blog processes, the binary a Fly.io image runs, each over a real LiteFS FUSE
// mount (static lease, node1 primary), following LiteFS's /events. A post made on one
// replica is read on the other in the next request, with the `__txid` cookie.
// Skipped, with a line saying why, where real LiteFS cannot run (see litefs_nodes.hpp).

#include <memory>
#include <string>
#include <vector>

#include "blog_client.hpp"
#include "litefs_nodes.hpp"

using namespace blog_client;

TEST_CASE("blog example on real LiteFS: a post made on one replica is read on another") {
  REQUIRE_REAL_LITEFS();
  litefs_cluster c({.nodes = 3, .lease = fwd_test::lease_kind::static_lease});
  c.start_all();
  litefs_tests::create_database(c, 0, true);

  std::vector<std::unique_ptr<demo::reserved_port>> fwd_ports, http_ports;
  std::string members;
  for (std::size_t i = 0; i < c.size(); ++i) {
    fwd_ports.push_back(std::make_unique<demo::reserved_port>());
    http_ports.push_back(std::make_unique<demo::reserved_port>());
    members += (i ? "," : "") + std::string("127.0.0.1:") + std::to_string(fwd_ports.back()->port());
  }
  std::vector<std::unique_ptr<demo::node_process>> nodes;
  for (std::size_t i = 0; i < c.size(); ++i) {
    nodes.push_back(std::make_unique<demo::node_process>(
        FWD_BLOG_PATH, std::vector<std::string>{}, false,
        std::vector<std::string>{
            "BLOG_DATABASE=" + (c.mount(i) / litefs_tests::db_name).string(),
            "BLOG_HTTP_LISTEN=127.0.0.1:" + std::to_string(http_ports[i]->port()),
            "FWD_LISTEN=127.0.0.1:" + std::to_string(fwd_ports[i]->port()),
            "FWD_MEMBERS=" + members,
            "FWD_SECRET=blog-litefs-test-secret-0123456789abcdefghij",
            "FWD_LITEFS_HOSTNAME=" + c.hostname(i),
            "LITEFS_HTTP=127.0.0.1:" + std::to_string(c.http_port(i)),
        }));
  }
  for (auto& n : nodes) {
    const auto ready = n->wait_for("READY ", std::chrono::seconds(60));
    INFO(n->output());
    REQUIRE(ready);
  }
  auto url = [&](std::size_t i, const std::string& path) {
    return "http://127.0.0.1:" + std::to_string(http_ports[i]->port()) + path;
  };
  const auto jar = (c.root() / "cookies").string();

  const auto created =
      curl("POST", url(1, "/posts"), jar, R"({"title":"on LiteFS","body":"b","tags":["real"]})");
  INFO(created.body);
  REQUIRE(created.status == 201);
  CHECK(json_field(created.body, "ran") == "forwarded");
  const auto id = json_field(created.body, "id");
  CHECK(contains(created.headers, "__txid=" + json_field(created.body, "txid")));

  const auto read = curl("GET", url(2, "/posts/" + id), jar);
  INFO(read.body);
  CHECK(read.status == 200);
  CHECK(contains(read.body, "\"title\":\"on LiteFS\""));
  CHECK(contains(read.body, "\"created_on\":\"" + c.hostname(0) + "\""));  // run by the primary

  const auto health = curl("GET", url(2, "/healthz"));
  CHECK(json_field(health.body, "role") == "replica");
  CHECK(json_field(health.body, "primary") == c.hostname(0));

  for (auto& n : nodes) n->terminate();
  for (auto& n : nodes) CHECK(n->wait_exit(std::chrono::seconds(10)) == 0);
}
