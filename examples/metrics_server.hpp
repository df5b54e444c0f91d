#pragma once

// Serves `GET /metrics` from a fwd::metrics in Prometheus' text format, on the examples'
// small HTTP server. A service that already has an HTTP server adds the same route there
// instead: the body is `metrics.render()`, the Content-Type fwd::metrics_content_type.
// Anything but GET or HEAD /metrics gets a 404 or 405.

#include <functional>
#include <fwd/metrics.hpp>
#include <memory>
#include <utility>

#include "http_server.hpp"

namespace demo {

class metrics_server {
 public:
  /// Listens on `where` (port 0: any free port). `on_scrape` (optional) runs for each
  /// /metrics request, once its response is rendered.
  metrics_server(boost::asio::any_io_executor executor, const boost::asio::ip::tcp::endpoint& where,
                 std::shared_ptr<const fwd::metrics> metrics, std::function<void()> on_scrape = {})
      : http_(executor, where,
              [metrics = std::move(metrics), on_scrape = std::move(on_scrape)](
                  request req, std::function<void(response)> reply) {
                reply(answer(req, *metrics, on_scrape));
              }) {}

  boost::asio::ip::tcp::endpoint local_endpoint() const { return http_.local_endpoint(); }

  /// Stops accepting; connections in progress end after their current request.
  void close() { http_.close(); }

 private:
  static response answer(const request& req, const fwd::metrics& metrics, const std::function<void()>& on_scrape) {
    response res;
    if (req.target() != "/metrics") {
      res.result(http::status::not_found);
      res.set(http::field::content_type, "text/plain");
      res.body() = "not found: the metrics are at /metrics\n";
    } else if (req.method() != http::verb::get && req.method() != http::verb::head) {
      res.result(http::status::method_not_allowed);
      res.set(http::field::allow, "GET, HEAD");
    } else {
      res.result(http::status::ok);
      res.set(http::field::content_type, fwd::metrics_content_type);
      if (req.method() == http::verb::get) res.body() = metrics.render();
      if (on_scrape) on_scrape();
    }
    return res;
  }

  http_server http_;
};

}  // namespace demo
