// fwd_blog: an HTTP JSON service on LiteFS where every node takes writes.
//
//   POST /posts                  {"title","body","tags":[...]}   -> 201 {"id","txid"}
//   POST /posts/<id>/comments    {"author","body"}               -> 201 {"id","txid"}
//   POST /import                 {"posts":[{...},...]}           -> 201 {"imported","txid"}
//   GET  /posts/<id>             the post, its tags and comments
//   GET  /healthz                this node's role and position (200, or 503 without a role)
//   GET  /metrics                fwd's metrics, Prometheus' text format
//
// Writes run on the primary, wherever they arrive (fwd forwards them). Each write answers
// with the primary's TXID after its commit, in a `Fwd-Txid` header and a `__txid` cookie
// (LiteFS's proxy hands out the same cookie). A read that carries either waits until this
// node's copy has reached that TXID, up to BLOG_READ_WAIT_MS (then 504), so a client
// sees its own writes on every node, in every later request.
//
// Configuration, from the environment (examples/http_service/fly/fly.toml sets it on Fly.io):
//   BLOG_DATABASE        the database in the LiteFS FUSE mount, e.g. /litefs/blog.db
//   BLOG_HTTP_LISTEN     where the HTTP API listens, ADDRESS:PORT (default 0.0.0.0:8080)
//   FWD_LISTEN           where fwd listens for the other nodes (default [::]:7070)
//   FWD_MEMBERS          "dns:NAME" (every A/AAAA record of NAME, at FWD_LISTEN's port) or
//                        a list "ADDRESS:PORT,ADDRESS:PORT,..."
//   FWD_SECRET           the cluster secret, the same on every node (32 bytes or more)
//   FWD_LITEFS_HOSTNAME  this node's LiteFS lease hostname (default: FLY_MACHINE_ID, which
//                        LiteFS on Fly.io uses too, else the OS hostname)
//   LITEFS_HTTP          LiteFS's HTTP API, ADDRESS:PORT (optional; follows its /events)
//   BLOG_READ_WAIT_MS    how long a read waits for the client's TXID (default 5000, as
//                        LiteFS's proxy)
//
// Prints "READY <http port> <fwd port>" once both listen and the schema is migrated.
// SIGTERM or SIGINT stops it cleanly.

#include <sqlite3.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/json.hpp>
#include <boost/json/src.hpp>  // Boost.JSON compiled into this program (header-only use)
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <fmt/format.h>
#include <fwd/metrics.hpp>
#include <fwd/migrate.hpp>
#include <fwd/node.hpp>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "blog.hpp"
#include "http_server.hpp"  // examples/

namespace blog {
/// Prepares the process for the LiteFS it runs on; true when that is the simulation used
/// by fwd's tests (litefs_real.cpp / litefs_simulated.cpp).
bool prepare_litefs();
}  // namespace blog

namespace {

namespace json = boost::json;
namespace http = demo::http;
using demo::request;
using demo::response;
using tcp = boost::asio::ip::tcp;

/// An environment variable, or `fallback` when unset or empty.
std::string env(const char* name, std::string fallback = {}) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? std::string(value) : fallback;
}

/// "ADDRESS:PORT", the address in brackets when IPv6 ("[::]:7070").
tcp::endpoint parse_endpoint(const std::string& text, const char* variable) {
  const auto colon = text.rfind(':');
  std::string address = colon == std::string::npos ? std::string() : text.substr(0, colon);
  if (address.size() >= 2 && address.front() == '[' && address.back() == ']')
    address = address.substr(1, address.size() - 2);
  boost::system::error_code ec;
  const auto ip = boost::asio::ip::make_address(address, ec);
  unsigned port = 0;
  const char* digits = colon == std::string::npos ? nullptr : text.c_str() + colon + 1;
  const auto [end, err] = digits ? std::from_chars(digits, text.c_str() + text.size(), port)
                                 : std::from_chars_result{nullptr, std::errc::invalid_argument};
  if (ec || err != std::errc() || end != text.c_str() + text.size() || port > 65535) {
    throw std::invalid_argument(
        fmt::format("{}={} is not ADDRESS:PORT (e.g. 0.0.0.0:8080 or [::]:7070)", variable, text));
  }
  return {ip, static_cast<std::uint16_t>(port)};
}

fwd::membership_options parse_members(const std::string& text, std::uint16_t fwd_port) {
  if (text.empty())
    throw std::invalid_argument("FWD_MEMBERS is unset: set dns:<app>.internal or a list of ADDRESS:PORT");
  if (text.rfind("dns:", 0) == 0) return fwd::dns_members(text.substr(4), fwd_port);
  std::vector<tcp::endpoint> list;
  std::size_t start = 0;
  while (start <= text.size()) {
    const auto comma = text.find(',', start);
    const auto item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (!item.empty()) list.push_back(parse_endpoint(item, "FWD_MEMBERS"));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return fwd::static_members(list);
}

std::string hex_txid(std::uint64_t txid) { return fmt::format("{:016x}", txid); }

/// The highest TXID the client says it has written: the `Fwd-Txid` header or the
/// `__txid` cookie (16 hex digits, as LiteFS's proxy writes it); 0 when neither is there.
std::uint64_t client_txid(const request& req) {
  auto parse = [](std::string_view hex) -> std::uint64_t {
    std::uint64_t value = 0;
    const auto [end, err] = std::from_chars(hex.data(), hex.data() + hex.size(), value, 16);
    return err == std::errc() && end == hex.data() + hex.size() ? value : 0;
  };
  std::uint64_t txid = 0;
  if (auto h = req.find("Fwd-Txid"); h != req.end()) txid = parse(h->value());
  if (auto c = req.find(http::field::cookie); c != req.end()) {
    const std::string_view cookies = c->value();
    std::size_t at = 0;
    while ((at = cookies.find("__txid=", at)) != std::string_view::npos) {
      if (at == 0 || cookies[at - 1] == ' ' || cookies[at - 1] == ';') {
        const auto begin = at + 7;
        const auto end = cookies.find(';', begin);
        txid = std::max(txid, parse(cookies.substr(begin, end == std::string_view::npos
                                                                ? std::string_view::npos
                                                                : end - begin)));
      }
      at += 7;
    }
  }
  return txid;
}

response json_response(http::status status, const json::value& body) {
  response res{status, 11};
  res.set(http::field::content_type, "application/json");
  res.body() = json::serialize(body) + "\n";
  return res;
}

response error_response(http::status status, std::string message) {
  return json_response(status, json::object{{"error", std::move(message)}});
}

/// The HTTP status for a failed write: what the client may do next.
http::status status_of(const boost::system::error_code& ec) {
  if (ec == fwd::errc::remote_failure || ec == fwd::errc::bad_argument)
    return http::status::unprocessable_entity;  // the writer refused the input
  if (ec.category() == fwd::sqlite_category() && (ec.value() & 0xff) == SQLITE_CONSTRAINT)
    return http::status::conflict;
  if (ec == fwd::errc::timeout || ec == fwd::errc::replication_lag)
    return http::status::gateway_timeout;
  if (fwd::classify(ec) == fwd::error_class::not_sent)
    return http::status::service_unavailable;  // nothing ran: the client may retry
  return http::status::internal_server_error;
}

blog::new_post post_from_json(const json::value& v) {
  const auto& o = v.as_object();
  blog::new_post post;
  post.title = json::value_to<std::string>(o.at("title"));
  if (auto it = o.find("body"); it != o.end()) post.body = json::value_to<std::string>(it->value());
  if (auto it = o.find("tags"); it != o.end())
    post.tags = json::value_to<std::vector<std::string>>(it->value());
  return post;
}

/// The service: routes requests to fwd calls (writes) and local reads.
class service {
 public:
  service(fwd::node& node, std::shared_ptr<fwd::metrics> metrics, std::chrono::milliseconds read_wait)
      : node_(node), metrics_(std::move(metrics)), read_wait_(read_wait) {}

  void handle(request req, std::function<void(response)> reply) {
    const std::string target(req.target());
    const auto path = target.substr(0, target.find('?'));
    try {
      if (req.method() == http::verb::get && path == "/healthz") return reply(health());
      if (req.method() == http::verb::get && path == "/metrics") {
        response res{http::status::ok, 11};
        res.set(http::field::content_type, fwd::metrics_content_type);
        res.body() = metrics_->render();
        return reply(std::move(res));
      }
      if (req.method() == http::verb::post && path == "/posts") {
        return write(blog::create_post, std::move(reply), "id",
                     post_from_json(json::parse(req.body())));
      }
      if (req.method() == http::verb::post && path == "/import") {
        const json::value body = json::parse(req.body());
        std::vector<blog::new_post> posts;
        for (const auto& p : body.as_object().at("posts").as_array())
          posts.push_back(post_from_json(p));
        return write(blog::import_posts, std::move(reply), "imported", std::move(posts));
      }
      std::int64_t post_id = 0;
      std::string rest;
      if (parse_post_path(path, post_id, rest)) {
        if (req.method() == http::verb::post && rest == "/comments") {
          const auto body = json::parse(req.body()).as_object();
          return write(blog::add_comment, std::move(reply), "id", post_id,
                       json::value_to<std::string>(body.at("author")),
                       json::value_to<std::string>(body.at("body")));
        }
        if (req.method() == http::verb::get && rest.empty())
          return read_post(post_id, client_txid(req), std::move(reply));
      }
      reply(error_response(http::status::not_found, "no such route: " + target));
    } catch (const std::exception& e) {
      // Bad JSON, a missing field, a wrong type: nothing was sent to the primary.
      reply(error_response(http::status::bad_request, e.what()));
    }
  }

 private:
  static bool parse_post_path(const std::string& path, std::int64_t& id, std::string& rest) {
    constexpr std::string_view prefix = "/posts/";
    if (path.rfind(prefix, 0) != 0) return false;
    const char* begin = path.data() + prefix.size();
    const auto [end, err] = std::from_chars(begin, path.data() + path.size(), id);
    if (err != std::errc() || end == begin) return false;
    rest.assign(end, path.data() + path.size());
    return true;
  }

  /// One write through fwd: it runs on the primary, exactly once; the answer carries the
  /// primary's TXID after the commit.
  template <class R, class... P, class... A>
  void write(const fwd::procedure<R(P...)>& proc, std::function<void(response)> reply,
             const char* result_name, A&&... args) {
    fwd::forward_options options;
    options.deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    options.report = std::make_shared<fwd::call_report>();
    auto diag = std::make_shared<fwd::diagnostics>();
    options.diagnostics = diag.get();
    node_.async_call(options, proc, std::forward<A>(args)...,
                     [reply = std::move(reply), report = options.report, diag, result_name](
                         boost::system::error_code ec, std::int64_t value) {
                       if (ec) {
                         auto res = error_response(
                             status_of(ec), fmt::format("{}: {} ({})", ec.message(), diag->message(),
                                                        fwd::to_string(fwd::classify(ec))));
                         return reply(std::move(res));
                       }
                       const auto txid = hex_txid(report->txid);
                       auto res = json_response(
                           http::status::created,
                           json::object{{result_name, value},
                                        {"txid", txid},
                                        {"ran", report->ran_locally ? "here" : "forwarded"},
                                        {"attempts", report->attempts}});
                       res.set("Fwd-Txid", txid);
                       res.set(http::field::set_cookie,
                               fmt::format("__txid={}; Path=/; Max-Age=60; HttpOnly; SameSite=Lax", txid));
                       reply(std::move(res));
                     });
  }

  /// Waits until this node's copy holds the client's last write, then reads.
  void read_post(std::int64_t id, std::uint64_t txid, std::function<void(response)> reply) {
    node_.async_wait_position(
        txid, read_wait_,
        [this, id, txid, reply = std::move(reply)](boost::system::error_code ec,
                                                   fwd::litefs::position reached) {
          if (ec) {
            return reply(error_response(
                http::status::gateway_timeout,
                fmt::format("this node has not reached TXID {} yet (it is at {}): {}",
                            hex_txid(txid), hex_txid(reached.txid), ec.message())));
          }
          try {
            reply(load_post(id));
          } catch (const std::exception& e) {
            reply(error_response(http::status::internal_server_error, e.what()));
          }
        });
  }

  response load_post(std::int64_t id) const {
    fwd::sqlite::connection db(node_.options().database.string(), SQLITE_OPEN_READONLY,
                               std::chrono::milliseconds(1000));
    auto post = db.prepare("SELECT title, body, created_on FROM posts WHERE id = ?1");
    if (!post.bind(1, id).step())
      return error_response(http::status::not_found, fmt::format("no post {}", id));
    json::object out{{"id", id},
                     {"title", std::string(post.column_text(0))},
                     {"body", std::string(post.column_text(1))},
                     {"created_on", std::string(post.column_text(2))}};
    json::array tags;
    auto t = db.prepare(
        "SELECT label FROM tags JOIN post_tags ON tags.id = tag_id WHERE post_id = ?1 ORDER BY label");
    t.bind(1, id);
    while (t.step()) tags.emplace_back(std::string(t.column_text(0)));
    out["tags"] = std::move(tags);
    json::array comments;
    auto c = db.prepare("SELECT id, author, body FROM comments WHERE post_id = ?1 ORDER BY id");
    c.bind(1, id);
    while (c.step()) {
      comments.emplace_back(json::object{{"id", c.column_int64(0)},
                                         {"author", std::string(c.column_text(1))},
                                         {"body", std::string(c.column_text(2))}});
    }
    out["comments"] = std::move(comments);
    out["read_at_txid"] = hex_txid(node_.litefs_state()->pos.txid);
    return json_response(http::status::ok, out);
  }

  response health() const {
    const auto state = node_.litefs_state();
    const bool known = state->role != fwd::litefs::role_kind::unknown && !state->mount_dead;
    json::object out{{"role", fwd::litefs::to_string(state->role)},
                     {"primary", state->primary_hostname},
                     {"txid", hex_txid(state->pos.txid)},
                     {"lag_ms", state->lag.count()},
                     {"node", node_.options().name}};
    if (!known) out["reason"] = state->reason;
    return json_response(known ? http::status::ok : http::status::service_unavailable, out);
  }

  fwd::node& node_;
  std::shared_ptr<fwd::metrics> metrics_;
  std::chrono::milliseconds read_wait_;
};

}  // namespace

int main() {
  fwd::node_options options;
  tcp::endpoint http_listen;
  std::chrono::milliseconds read_wait{5000};
  try {
    const bool simulated = blog::prepare_litefs();
    options.database = env("BLOG_DATABASE");
    if (options.database.empty())
      throw std::invalid_argument("BLOG_DATABASE is unset: set the database path in the LiteFS mount");
    http_listen = parse_endpoint(env("BLOG_HTTP_LISTEN", "0.0.0.0:8080"), "BLOG_HTTP_LISTEN");
    options.listen = parse_endpoint(env("FWD_LISTEN", "[::]:7070"), "FWD_LISTEN");
    options.members = parse_members(env("FWD_MEMBERS"), options.listen.port());
    options.secret = fwd::secret_from_env("FWD_SECRET");
    options.litefs_hostname = env("FWD_LITEFS_HOSTNAME", env("FLY_MACHINE_ID", fwd::os_hostname()));
    if (const auto litefs = env("LITEFS_HTTP"); !litefs.empty())
      options.litefs_http = parse_endpoint(litefs, "LITEFS_HTTP");
    read_wait = std::chrono::milliseconds(std::stoi(env("BLOG_READ_WAIT_MS", "5000")));
    options.require_fuse = !simulated;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fwd_blog: %s\n", e.what());
    return 2;
  }

  boost::asio::io_context io;
  auto metrics = std::make_shared<fwd::metrics>();
  options.telemetry = metrics->hooks();
  fwd::node node(io.get_executor(), options);
  const blog::writers writers{options.litefs_hostname};
  node.define(blog::create_post, [writers](fwd::sqlite::connection& db, const blog::new_post& post) {
    return writers.insert_post(db, post);
  });
  node.define(blog::add_comment, [writers](fwd::sqlite::connection& db, std::int64_t post_id,
                                           const std::string& author, const std::string& body) {
    return writers.insert_comment(db, post_id, author, body);
  });
  node.define(blog::import_posts,
              [writers](fwd::sqlite::connection& db, const std::vector<blog::new_post>& posts) {
                return writers.import(db, posts);
              });

  service blog_service(node, metrics, read_wait);
  std::unique_ptr<demo::http_server> http;
  try {
    node.start();
    http = std::make_unique<demo::http_server>(
        io.get_executor(), http_listen,
        [&blog_service](request req, std::function<void(response)> reply) {
          blog_service.handle(std::move(req), std::move(reply));
        });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fwd_blog: cannot start: %s\n", e.what());
    return 1;
  }

  boost::asio::signal_set signals(io, SIGTERM, SIGINT);
  signals.async_wait([&](boost::system::error_code, int) {
    http->close();
    node.async_stop([&io] { io.stop(); });
  });
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) threads.emplace_back([&io] { io.run(); });

  int status = 0;
  try {
    // Every node asks; the primary applies what is missing once, replicas wait for it.
    fwd::migrate(node, blog::schema(), std::chrono::seconds(60));
    std::printf("READY %u %u\n", static_cast<unsigned>(http->local_endpoint().port()),
                static_cast<unsigned>(node.local_endpoint().port()));
    std::fflush(stdout);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fwd_blog: migration failed: %s\n", e.what());
    status = 1;
    boost::asio::post(io, [&] {
      http->close();
      node.async_stop([&io] { io.stop(); });
    });
  }
  for (auto& t : threads) t.join();
  return status;
}
