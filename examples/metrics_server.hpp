#pragma once

// A small HTTP server (Boost.Beast) that serves `GET /metrics` from a fwd::metrics in
// Prometheus' text format. A service that already has an HTTP server adds the same route
// there instead: the body is `metrics.render()`, the Content-Type fwd::metrics_content_type.
//
// Connections are kept alive (Prometheus reuses one per target); each request is read with
// a deadline, bodies are refused, and anything but GET /metrics gets a 404 or 405.

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <functional>
#include <fwd/metrics.hpp>
#include <memory>
#include <optional>
#include <string>
#include <utility>

namespace demo {

class metrics_server {
 public:
  /// Listens on `where` (port 0: any free port). `on_scrape` (optional) runs after each
  /// /metrics response is written.
  metrics_server(boost::asio::any_io_executor executor, const boost::asio::ip::tcp::endpoint& where,
                 std::shared_ptr<const fwd::metrics> metrics, std::function<void()> on_scrape = {})
      : state_(std::make_shared<state>(executor, where, std::move(metrics), std::move(on_scrape))) {
    accept(state_);
  }
  metrics_server(const metrics_server&) = delete;
  metrics_server& operator=(const metrics_server&) = delete;
  ~metrics_server() { close(); }

  boost::asio::ip::tcp::endpoint local_endpoint() const { return state_->acceptor.local_endpoint(); }

  /// Stops accepting; connections in progress end after their current request.
  void close() {
    boost::asio::post(state_->acceptor.get_executor(), [s = state_] {
      boost::system::error_code ignored;
      s->acceptor.close(ignored);
    });
  }

 private:
  using tcp = boost::asio::ip::tcp;

  struct state {
    state(boost::asio::any_io_executor ex, const tcp::endpoint& where,
          std::shared_ptr<const fwd::metrics> m, std::function<void()> scraped)
        : executor(ex), acceptor(boost::asio::make_strand(ex), where), metrics(std::move(m)),
          on_scrape(std::move(scraped)) {}
    boost::asio::any_io_executor executor;
    tcp::acceptor acceptor;
    std::shared_ptr<const fwd::metrics> metrics;
    std::function<void()> on_scrape;
  };

  struct session : std::enable_shared_from_this<session> {
    session(tcp::socket socket, std::shared_ptr<state> s) : stream(std::move(socket)), server(std::move(s)) {}

    void read() {
      request = {};
      parser.emplace();
      parser->body_limit(0);
      stream.expires_after(std::chrono::seconds(30));
      boost::beast::http::async_read(
          stream, buffer, *parser, [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
            if (ec) return self->shut();
            self->request = self->parser->release();
            self->answer();
          });
    }

    void answer() {
      namespace http = boost::beast::http;
      auto response = std::make_shared<http::response<http::string_body>>();
      response->version(request.version());
      response->keep_alive(request.keep_alive());
      response->set(http::field::server, "fwd");
      const bool scrape = request.target() == "/metrics";
      if (!scrape) {
        response->result(http::status::not_found);
        response->set(http::field::content_type, "text/plain");
        response->body() = "not found: the metrics are at /metrics\n";
      } else if (request.method() != http::verb::get && request.method() != http::verb::head) {
        response->result(http::status::method_not_allowed);
        response->set(http::field::allow, "GET, HEAD");
      } else {
        response->result(http::status::ok);
        response->set(http::field::content_type, fwd::metrics_content_type);
        response->body() = server->metrics->render();
      }
      response->prepare_payload();
      if (request.method() == http::verb::head) response->body().clear();
      stream.expires_after(std::chrono::seconds(30));
      http::async_write(stream, *response,
                        [self = shared_from_this(), response, scrape](boost::system::error_code ec,
                                                                      std::size_t) {
                          if (scrape && !ec && self->server->on_scrape) self->server->on_scrape();
                          if (ec || !response->keep_alive()) return self->shut();
                          self->read();
                        });
    }

    void shut() {
      boost::system::error_code ignored;
      stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
      stream.close();
    }

    boost::beast::tcp_stream stream;
    std::shared_ptr<state> server;
    boost::beast::flat_buffer buffer;
    std::optional<boost::beast::http::request_parser<boost::beast::http::empty_body>> parser;
    boost::beast::http::request<boost::beast::http::empty_body> request;
  };

  static void accept(const std::shared_ptr<state>& s) {
    s->acceptor.async_accept(boost::asio::make_strand(s->executor),
                             [s](boost::system::error_code ec, tcp::socket socket) {
                               if (ec == boost::asio::error::operation_aborted || !s->acceptor.is_open())
                                 return;
                               if (!ec) std::make_shared<session>(std::move(socket), s)->read();
                               accept(s);
                             });
  }

  std::shared_ptr<state> state_;
};

}  // namespace demo
