// fwd_node's /metrics, end to end: two fwd_node processes over the LiteFS simulation make
// calls; their metrics pass `promtool check metrics`, and a real Prometheus server scrapes
// the replica and answers a query with the number of writes it forwarded.

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "../support/child_process.hpp"
#include "../support/temp_dir.hpp"
#include "cluster_driver.hpp"
#include "litefs_sim.hpp"

using namespace std::chrono_literals;

namespace {

struct http_reply {
  unsigned status = 0;
  std::string content_type;
  std::string body;
};

http_reply http_get(std::uint16_t port, const std::string& target) {
  namespace http = boost::beast::http;
  boost::asio::io_context io;
  boost::beast::tcp_stream stream(io);
  stream.expires_after(10s);
  stream.connect({boost::asio::ip::make_address("127.0.0.1"), port});
  http::request<http::empty_body> request(http::verb::get, target, 11);
  request.set(http::field::host, "127.0.0.1");
  http::write(stream, request);
  boost::beast::flat_buffer buffer;
  http::response<http::string_body> response;
  http::read(stream, buffer, response);
  boost::system::error_code ignored;
  stream.socket().shutdown(boost::asio::ip::tcp::socket::shutdown_both, ignored);
  return {response.result_int(), std::string(response[http::field::content_type]), response.body()};
}

std::string url_encode(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '_' || c == '.' || c == '-' || c == '~') {
      out += static_cast<char>(c);
    } else {
      char hex[4];
      std::snprintf(hex, sizeof hex, "%%%02X", c);
      out += hex;
    }
  }
  return out;
}

// Runs a shell command; its exit status and everything it printed.
std::pair<int, std::string> run(const std::string& command) {
  std::string output;
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return {-1, "popen failed"};
  char chunk[4096];
  while (std::size_t n = std::fread(chunk, 1, sizeof chunk, pipe)) output.append(chunk, n);
  const int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

// Two nodes, node-a the LiteFS primary, each serving /metrics.
struct metrics_cluster {
  fwd_sim::cluster sim{[] {
    fwd_sim::cluster_options o;
    o.hostnames = {"node-a", "node-b"};
    return o;
  }()};
  std::vector<std::unique_ptr<demo::reserved_port>> reserved;
  std::vector<std::uint16_t> ports, metrics_ports;
  std::vector<std::unique_ptr<demo::node_process>> nodes;
  demo::controller control;

  metrics_cluster() {
    for (std::size_t i = 0; i < 2; ++i) {
      reserved.push_back(std::make_unique<demo::reserved_port>());
      ports.push_back(reserved.back()->port());
      reserved.push_back(std::make_unique<demo::reserved_port>());
      metrics_ports.push_back(reserved.back()->port());
    }
    sim.start_replication(2ms);
    for (std::size_t i = 0; i < 2; ++i) {
      nodes.push_back(std::make_unique<demo::node_process>(
          FWD_NODE_PATH,
          demo::node_arguments(sim.hostname(i), sim.mount(i).string(), ports[i], ports, true,
                               {"--metrics-listen", "127.0.0.1:" + std::to_string(metrics_ports[i])}),
          false));
    }
    for (std::size_t i = 0; i < 2; ++i) {
      const bool ok = nodes[i]->wait_for("METRICS ", 20s).has_value() &&
                      nodes[i]->wait_for("MIGRATED ", 20s).has_value();
      if (!ok) FAIL("node " << i << " printed:\n" << nodes[i]->output());
    }
  }

  demo::control_result append(std::size_t from, const std::string& writer, int seq) {
    return control.call(ports[from], "append", {writer, std::to_string(seq)});
  }
};

// One sample's value in Prometheus' text format, or -1 when absent.
double sample(const std::string& text, const std::string& series) {
  const auto at = text.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + series.size() + 2));
}

}  // namespace

TEST_CASE("fwd_node's /metrics counts forwarded and local writes and passes promtool", "[metrics]") {
  metrics_cluster c;
  constexpr int forwarded = 5, local = 3;
  for (int i = 0; i < forwarded; ++i) {
    const auto r = c.append(1, "from-b", i);
    INFO(r.detail);
    REQUIRE(r.category == 0);
    REQUIRE_FALSE(r.ran_locally);
  }
  for (int i = 0; i < local; ++i) {
    const auto r = c.append(0, "from-a", i);
    INFO(r.detail);
    REQUIRE(r.category == 0);
    REQUIRE(r.ran_locally);
  }

  const http_reply replica = http_get(c.metrics_ports[1], "/metrics");
  REQUIRE(replica.status == 200);
  CHECK(replica.content_type == "text/plain; version=0.0.4; charset=utf-8");
  const std::string& text = replica.body;
  INFO(text);
  CHECK(sample(text, "fwd_write_duration_seconds_count{procedure=\"demo.append\",outcome=\"ok\","
                     "path=\"forwarded\"}") == forwarded);
  CHECK(sample(text, "fwd_replication_wait_seconds_count{outcome=\"ok\"}") >= forwarded);
  CHECK(sample(text, "fwd_rpc_call_duration_seconds_count{procedure=\"demo.append\",outcome=\"ok\","
                     "target=\"remote\"}") == forwarded);
  CHECK(sample(text, "fwd_cluster_members") == 2);
  CHECK(sample(text, "fwd_litefs_role{role=\"replica\"}") == 1);
  CHECK(sample(text, "fwd_primary_known") == 1);
  CHECK(sample(text, "fwd_rpc_connections{direction=\"outbound\"}") >= 1);
  // Peers' addresses never become labels (only Prometheus adds its own `instance`).
  CHECK(text.find("127.0.0.1") == std::string::npos);

  const http_reply primary = http_get(c.metrics_ports[0], "/metrics");
  REQUIRE(primary.status == 200);
  INFO(primary.body);
  CHECK(sample(primary.body, "fwd_write_duration_seconds_count{procedure=\"demo.append\",outcome=\"ok\","
                             "path=\"local\"}") == local);
  CHECK(sample(primary.body, "fwd_litefs_role{role=\"primary\"}") == 1);
  // The writer ran the forwarded writes and the local ones, each in some batch.
  CHECK(sample(primary.body, "fwd_writer_batch_size_sum") >= forwarded + local);
  CHECK(sample(primary.body, "fwd_rpc_connections{direction=\"inbound\"}") >= 1);

  CHECK(http_get(c.metrics_ports[1], "/other").status == 404);

  // promtool is required: it is installed by tools/bootstrap (Debian's `prometheus`).
  const std::string promtool = FWD_PROMTOOL;
  REQUIRE_FALSE(promtool.find("NOTFOUND") != std::string::npos);
  fwd_test::temp_dir dir;
  for (const auto* body : {&text, &primary.body}) {
    const auto file = dir.path() / "scrape.txt";
    std::ofstream(file) << *body;
    const auto [status, output] = run(promtool + " check metrics < " + file.string());
    INFO(output);
    CHECK(status == 0);
    CHECK(output.find("error") == std::string::npos);
  }
}

TEST_CASE("a real Prometheus scrapes fwd_node and answers a query with its counter", "[metrics]") {
  const std::string prometheus = FWD_PROMETHEUS;
  REQUIRE_FALSE(prometheus.find("NOTFOUND") != std::string::npos);
  metrics_cluster c;
  constexpr int forwarded = 4;
  for (int i = 0; i < forwarded; ++i) {
    const auto r = c.append(1, "scraped", i);
    INFO(r.detail);
    REQUIRE(r.category == 0);
  }

  fwd_test::temp_dir dir;
  demo::reserved_port web;
  const auto config = dir.path() / "prometheus.yml";
  std::ofstream(config) << "global:\n"
                           "  scrape_interval: 1s\n"
                           "  scrape_timeout: 1s\n"
                           "scrape_configs:\n"
                           "  - job_name: fwd\n"
                           "    static_configs:\n"
                           "      - targets: ['127.0.0.1:"
                        << c.metrics_ports[1] << "']\n";
  std::filesystem::create_directories(dir.path() / "data");
  // Its log goes to stdout, where the test waits for "ready".
  fwd_test::child_process server({"/bin/sh", "-c",
                                  "exec " + prometheus + " --config.file=" + config.string() +
                                      " --storage.tsdb.path=" + (dir.path() / "data").string() +
                                      " --web.listen-address=127.0.0.1:" + std::to_string(web.port()) +
                                      " 2>&1"});
  std::string log;
  for (;;) {
    const std::string line = server.read_line(60s);  // throws when Prometheus does not start
    log += line + "\n";
    if (line.find("Server is ready to receive web requests") != std::string::npos) break;
  }
  INFO(log);

  // Each scrape the node answers is an event ("SCRAPED n"): query after each, up to 20.
  const std::string query =
      "fwd_write_duration_seconds_count{job=\"fwd\",procedure=\"demo.append\",path=\"forwarded\"}";
  const std::regex value_re(R"re("value":\[[0-9.e+]+,"([^"]+)"\])re");
  std::string answer;
  std::smatch match;
  bool found = false;
  for (int n = 1; n <= 20 && !found; ++n) {
    REQUIRE(c.nodes[1]->wait_for("SCRAPED " + std::to_string(n), 30s));
    const http_reply r = http_get(web.port(), "/api/v1/query?query=" + url_encode(query));
    REQUIRE(r.status == 200);
    answer = r.body;
    found = std::regex_search(answer, match, value_re);
  }
  INFO(answer);
  REQUIRE(found);
  CHECK(answer.find("\"status\":\"success\"") != std::string::npos);
  CHECK(std::stod(match[1].str()) == forwarded);
  CHECK(answer.find("\"instance\":\"127.0.0.1:" + std::to_string(c.metrics_ports[1]) + "\"") !=
        std::string::npos);
}
