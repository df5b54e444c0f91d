#pragma once

// A small HTTP/1.1 server (Boost.Beast) for the examples: it reads a request, hands it to
// the handler, and writes the response the handler gives back, whenever and from whichever
// thread it gives it (the blog answers after a forwarded write, or after a wait for a
// position). Keep-alive, a read deadline, a 1 MiB body limit.

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <utility>

namespace demo {

namespace http = boost::beast::http;
using request = http::request<http::string_body>;
using response = http::response<http::string_body>;
/// Called once per request; it must call `reply` exactly once, from any thread.
using handler = std::function<void(request, std::function<void(response)> reply)>;

class http_server {
 public:
  http_server(boost::asio::any_io_executor executor, const boost::asio::ip::tcp::endpoint& where,
              handler on_request)
      : state_(std::make_shared<state>(executor, where, std::move(on_request))) {
    accept(state_);
  }
  http_server(const http_server&) = delete;
  http_server& operator=(const http_server&) = delete;
  ~http_server() { close(); }

  boost::asio::ip::tcp::endpoint local_endpoint() const { return state_->acceptor.local_endpoint(); }

  /// Stops accepting; open connections end after their current request.
  void close() {
    boost::asio::post(state_->acceptor.get_executor(), [s = state_] {
      boost::system::error_code ignored;
      s->acceptor.close(ignored);
    });
  }

 private:
  using tcp = boost::asio::ip::tcp;

  struct state {
    state(boost::asio::any_io_executor ex, const tcp::endpoint& where, handler h)
        : executor(ex), acceptor(boost::asio::make_strand(ex)), on_request(std::move(h)) {
      acceptor.open(where.protocol());
      acceptor.set_option(tcp::acceptor::reuse_address(true));
      acceptor.bind(where);
      acceptor.listen();
    }
    boost::asio::any_io_executor executor;
    tcp::acceptor acceptor;
    handler on_request;
  };

  struct session : std::enable_shared_from_this<session> {
    session(tcp::socket socket, std::shared_ptr<state> s)
        : stream(std::move(socket)), server(std::move(s)) {}

    void read() {
      parser.emplace();
      parser->body_limit(1 << 20);
      stream.expires_after(std::chrono::seconds(30));
      http::async_read(stream, buffer, *parser,
                       [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
                         if (ec) return self->shut();
                         self->stream.expires_never();  // the handler may take its time
                         self->dispatch(self->parser->release());
                       });
    }

    void dispatch(request req) {
      const unsigned version = req.version();
      const bool keep_alive = req.keep_alive();
      auto reply = [self = shared_from_this(), version, keep_alive](response res) {
        // Back to the session's strand, wherever the handler answered from.
        boost::asio::post(self->stream.get_executor(),
                          [self, version, keep_alive, res = std::move(res)]() mutable {
                            res.version(version);
                            res.keep_alive(keep_alive);
                            res.set(http::field::server, "fwd");
                            res.prepare_payload();
                            self->write(std::move(res));
                          });
      };
      try {
        server->on_request(std::move(req), std::move(reply));
      } catch (const std::exception&) {
        shut();  // the handler broke its promise; drop the connection rather than hang
      }
    }

    void write(response res) {
      auto shared = std::make_shared<response>(std::move(res));
      stream.expires_after(std::chrono::seconds(30));
      http::async_write(stream, *shared,
                        [self = shared_from_this(), shared](boost::system::error_code ec, std::size_t) {
                          if (ec || !shared->keep_alive()) return self->shut();
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
    std::optional<http::request_parser<http::string_body>> parser;
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
