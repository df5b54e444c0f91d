// The blog example (examples/http_service) as a client uses it: three fwd_blog processes
// over the LiteFS simulation, driven with a real curl and its cookie jar. A post made on
// one replica is read on the other replica in the next request, which waits for the
// post's TXID (the `__txid` cookie) instead of answering from a stale copy.

#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "blog_client.hpp"
#include "cluster_driver.hpp"
#include "litefs_sim.hpp"

namespace {

using namespace blog_client;

/// Three blog nodes over a simulated cluster (node-a primary), each on its own HTTP port.
struct blog_cluster {
  fwd_sim::cluster sim{fwd_sim::cluster_options{}};
  std::vector<std::unique_ptr<demo::reserved_port>> fwd_ports, http_ports;
  std::vector<std::unique_ptr<demo::node_process>> nodes;

  blog_cluster() {
    sim.start_replication(std::chrono::milliseconds(2));
    std::string members;
    for (int i = 0; i < 3; ++i) {
      fwd_ports.push_back(std::make_unique<demo::reserved_port>());
      http_ports.push_back(std::make_unique<demo::reserved_port>());
      members += (i ? "," : "") + std::string("127.0.0.1:") + std::to_string(fwd_ports.back()->port());
    }
    for (std::size_t i = 0; i < 3; ++i) {
      nodes.push_back(std::make_unique<demo::node_process>(
          FWD_BLOG_PATH, std::vector<std::string>{}, false,
          std::vector<std::string>{
              "BLOG_DATABASE=" + sim.database_path(i).string(),
              "BLOG_HTTP_LISTEN=127.0.0.1:" + std::to_string(http_ports[i]->port()),
              "BLOG_READ_WAIT_MS=1500",
              "FWD_LISTEN=127.0.0.1:" + std::to_string(fwd_ports[i]->port()),
              "FWD_MEMBERS=" + members,
              "FWD_SECRET=blog-test-secret-0123456789abcdefghijklmnop",
              "FWD_LITEFS_HOSTNAME=" + sim.hostname(i),
              "LITEFS_HTTP=127.0.0.1:" + std::to_string(sim.http_port(i)),
          }));
    }
    for (std::size_t i = 0; i < 3; ++i) {
      const auto ready = nodes[i]->wait_for("READY ", std::chrono::seconds(30));
      INFO(nodes[i]->output());
      REQUIRE(ready);
    }
  }

  std::string url(std::size_t node, const std::string& path) const {
    return "http://127.0.0.1:" + std::to_string(http_ports[node]->port()) + path;
  }
};

}  // namespace

TEST_CASE("blog example: a post made on one replica is read on another in the next request") {
  blog_cluster blog;
  const auto jar = (std::filesystem::temp_directory_path() /
                    ("fwd-blog-jar-" + std::to_string(::getpid())))
                       .string();
  std::filesystem::remove(jar);

  // node-c stops receiving replication: it keeps the schema, and nothing after.
  blog.sim.disconnect(2);

  const auto created = curl("POST", blog.url(1, "/posts"), jar,
                            R"({"title":"First","body":"hello","tags":["fwd","litefs"]})");
  INFO(created.body);
  REQUIRE(created.status == 201);
  CHECK(json_field(created.body, "ran") == "forwarded");  // node-b is a replica
  const std::string id = json_field(created.body, "id");
  const std::string txid = json_field(created.body, "txid");
  REQUIRE(!id.empty());
  REQUIRE(txid.size() == 16);
  CHECK(contains(created.headers, "Fwd-Txid: " + txid));
  CHECK(contains(created.headers, "__txid=" + txid));

  // The replica that took the write reads it at once (fwd waited for it before answering).
  const auto on_b = curl("GET", blog.url(1, "/posts/" + id), jar);
  CHECK(on_b.status == 200);
  CHECK(contains(on_b.body, "\"title\":\"First\""));

  // node-c has not got it: without the cookie it answers from its copy (no post), with the
  // cookie it waits for the TXID and, as it does not come, says so (504) rather than lie.
  CHECK(curl("GET", blog.url(2, "/posts/" + id)).status == 404);
  const auto stale = curl("GET", blog.url(2, "/posts/" + id), jar);
  INFO(stale.body);
  CHECK(stale.status == 504);

  // With the cookie, while node-c catches up: the read waits and sees the post.
  http_answer waited;
  std::thread reader([&] { waited = curl("GET", blog.url(2, "/posts/" + id), jar); });
  blog.sim.reconnect(2);
  reader.join();
  INFO(waited.body);
  CHECK(waited.status == 200);
  CHECK(contains(waited.body, "\"title\":\"First\""));
  CHECK(contains(waited.body, R"("tags":["fwd","litefs"])"));
  CHECK(contains(waited.body, "\"created_on\":\"node-a\""));  // run by the primary

  // A comment on node-c, read back on node-b with the cookie node-c set.
  const auto comment = curl("POST", blog.url(2, "/posts/" + id + "/comments"), jar,
                            R"({"author":"ann","body":"nice"})");
  INFO(comment.body);
  REQUIRE(comment.status == 201);
  CHECK(json_field(comment.body, "txid") > txid);
  const auto with_comment = curl("GET", blog.url(1, "/posts/" + id), jar);
  CHECK(with_comment.status == 200);
  CHECK(contains(with_comment.body, R"("author":"ann","body":"nice")"));

  // A comment on a post that does not exist: the writer refuses it, nothing is written;
  // the same answer whether the write was forwarded (node-b) or ran here (node-a).
  CHECK(curl("POST", blog.url(1, "/posts/999999/comments"), jar, R"({"author":"x","body":"y"})").status ==
        422);
  CHECK(curl("POST", blog.url(0, "/posts/999999/comments"), jar, R"({"author":"x","body":"y"})").status ==
        422);
  // Malformed input never reaches the primary.
  CHECK(curl("POST", blog.url(1, "/posts"), jar, R"({"body":"no title"})").status == 400);
  std::filesystem::remove(jar);
}

TEST_CASE("blog example: a bulk import is one transaction, all or nothing") {
  blog_cluster blog;
  std::string posts;
  for (int i = 0; i < 200; ++i)
    posts += (i ? "," : "") + std::string(R"({"title":"bulk )") + std::to_string(i) + R"(","tags":["bulk"]})";
  const auto imported = curl("POST", blog.url(2, "/import"), {}, R"({"posts":[)" + posts + "]}");
  INFO(imported.body);
  REQUIRE(imported.status == 201);
  CHECK(json_field(imported.body, "imported") == "200");

  // One bad row (an empty title) and none of the batch is written.
  const auto refused =
      curl("POST", blog.url(1, "/import"), {}, R"({"posts":[{"title":"ok"},{"title":""}]})");
  CHECK(refused.status == 422);

  fwd::sqlite::connection db(blog.sim.database_path(0).string(), SQLITE_OPEN_READONLY,
                             std::chrono::milliseconds(1000));
  auto count = db.prepare("SELECT count(*), sum(title = 'ok') FROM posts");
  REQUIRE(count.step());
  CHECK(count.column_int64(0) == 200);
  CHECK(count.column_int64(1) == 0);
  auto links = db.prepare("SELECT count(*) FROM post_tags JOIN tags ON tags.id = tag_id WHERE label = 'bulk'");
  REQUIRE(links.step());
  CHECK(links.column_int64(0) == 200);
}

TEST_CASE("blog example: /healthz tells each node's role, /metrics serves fwd's metrics") {
  blog_cluster blog;
  const auto primary = curl("GET", blog.url(0, "/healthz"));
  CHECK(primary.status == 200);
  CHECK(json_field(primary.body, "role") == "primary");
  const auto replica = curl("GET", blog.url(1, "/healthz"));
  CHECK(replica.status == 200);
  CHECK(json_field(replica.body, "role") == "replica");
  CHECK(json_field(replica.body, "primary") == "node-a");

  REQUIRE(curl("POST", blog.url(1, "/posts"), {}, R"({"title":"counted"})").status == 201);
  const auto metrics = curl("GET", blog.url(1, "/metrics"));
  CHECK(metrics.status == 200);
  CHECK(contains(metrics.headers, "text/plain; version=0.0.4"));
  INFO(metrics.body.substr(0, 2000));
  CHECK(contains(metrics.body, "procedure=\"blog.create_post\""));
  CHECK(curl("GET", blog.url(1, "/nothing")).status == 404);

  // SIGTERM: each node stops cleanly.
  for (auto& n : blog.nodes) n->terminate();
  for (auto& n : blog.nodes) CHECK(n->wait_exit(std::chrono::seconds(10)) == 0);
}
