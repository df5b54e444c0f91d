#include "consul_standin.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <cstdio>
#include <cstring>
#include <list>
#include <random>
#include <regex>

namespace fwd_test {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using clock_type = std::chrono::steady_clock;

namespace {

// A Go duration ("10s", "500ms", "1m0s", "1.5s") or a number of nanoseconds.
std::chrono::nanoseconds parse_duration(const std::string& text) {
  if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos)
    return std::chrono::nanoseconds(std::stoll(text));
  static const std::regex part(R"(([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h))");
  double total_ns = 0;
  for (std::sregex_iterator it(text.begin(), text.end(), part), end; it != end; ++it) {
    const double v = std::stod((*it)[1].str());
    const std::string unit = (*it)[2].str();
    const double scale = unit == "ns"                   ? 1
                         : unit == "us" || unit == "µs" ? 1e3
                         : unit == "ms"                 ? 1e6
                         : unit == "s"                  ? 1e9
                         : unit == "m"                  ? 60e9
                                                        : 3600e9;
    total_ns += v * scale;
  }
  return std::chrono::nanoseconds(static_cast<std::int64_t>(total_ns));
}

std::string base64(const std::string& in) {
  static const char* table = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const unsigned n = (static_cast<unsigned char>(in[i]) << 16) |
                       (static_cast<unsigned char>(in[i + 1]) << 8) |
                       static_cast<unsigned char>(in[i + 2]);
    out += table[(n >> 18) & 63];
    out += table[(n >> 12) & 63];
    out += table[(n >> 6) & 63];
    out += table[n & 63];
  }
  if (i + 1 == in.size()) {
    const unsigned n = static_cast<unsigned char>(in[i]) << 16;
    out += table[(n >> 18) & 63];
    out += table[(n >> 12) & 63];
    out += "==";
  } else if (i + 2 == in.size()) {
    const unsigned n = (static_cast<unsigned char>(in[i]) << 16) |
                       (static_cast<unsigned char>(in[i + 1]) << 8);
    out += table[(n >> 18) & 63];
    out += table[(n >> 12) & 63];
    out += table[(n >> 6) & 63];
    out += '=';
  }
  return out;
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

std::string json_field(const std::string& body, const std::string& name) {
  // "Name":"value" or "Name":123
  const std::regex re("\"" + name + "\"\\s*:\\s*(\"([^\"]*)\"|([0-9]+))");
  std::smatch m;
  if (!std::regex_search(body, m, re)) return {};
  return m[2].matched ? m[2].str() : m[3].str();
}

std::map<std::string, std::string> parse_query(const std::string& q) {
  std::map<std::string, std::string> out;
  std::size_t start = 0;
  while (start <= q.size()) {
    std::size_t end = q.find('&', start);
    if (end == std::string::npos) end = q.size();
    const std::string item = q.substr(start, end - start);
    const std::size_t eq = item.find('=');
    if (!item.empty()) out[item.substr(0, eq)] = eq == std::string::npos ? "" : item.substr(eq + 1);
    start = end + 1;
  }
  return out;
}

}  // namespace

struct consul_standin::impl {
  struct session {
    std::string id, name, behavior, ttl_text;
    std::chrono::nanoseconds ttl{0}, lock_delay{0};
    clock_type::time_point expires = clock_type::time_point::max();
  };
  struct pair {
    std::string value, session;
    std::uint64_t create_index = 0, modify_index = 0, lock_index = 0;
  };

  asio::io_context io;
  tcp::acceptor acceptor{io};
  asio::steady_timer reaper{io};
  std::thread thread;

  std::mutex mutex;  // guards everything below (the io thread and the accessors)
  std::map<std::string, session> sessions;
  std::map<std::string, pair> kv;
  std::map<std::string, clock_type::time_point> lock_delay_until;
  std::uint64_t index = 1;
  std::list<asio::steady_timer*> waiters;  // blocking queries, woken on each KV change
  std::map<std::string, int> counts;
  std::mt19937_64 random{std::random_device{}()};

  std::string new_id() {
    char buf[40];
    const std::uint64_t a = random(), b = random();
    std::snprintf(buf, sizeof buf, "%08x-%04x-%04x-%04x-%012llx", static_cast<unsigned>(a >> 32),
                  static_cast<unsigned>((a >> 16) & 0xffff), static_cast<unsigned>(a & 0xffff),
                  static_cast<unsigned>(b >> 48),
                  static_cast<unsigned long long>(b & 0xffffffffffffULL));
    return buf;
  }

  // Called with the mutex held after any KV change.
  void kv_changed() {
    ++index;
    for (auto* t : waiters) t->cancel();
  }

  // Invalidates a session (mutex held): its keys are deleted and their lock-delay starts.
  void invalidate(const std::string& id) {
    auto it = sessions.find(id);
    if (it == sessions.end()) return;
    const session s = it->second;
    sessions.erase(it);
    bool changed = false;
    for (auto k = kv.begin(); k != kv.end();) {
      if (k->second.session == id) {
        if (s.lock_delay.count() > 0)
          lock_delay_until[k->first] =
              clock_type::now() + std::chrono::duration_cast<clock_type::duration>(s.lock_delay);
        if (s.behavior == "delete") {
          k = kv.erase(k);
        } else {
          k->second.session.clear();
          ++k;
        }
        changed = true;
      } else {
        ++k;
      }
    }
    if (changed) kv_changed();
  }

  // Expires sessions past their TTL and arms the timer for the next one (mutex held).
  void reap() {
    const auto now = clock_type::now();
    std::vector<std::string> expired;
    auto next = clock_type::time_point::max();
    for (auto& [id, s] : sessions) {
      if (s.expires <= now)
        expired.push_back(id);
      else
        next = std::min(next, s.expires);
    }
    for (auto& id : expired) invalidate(id);
    if (next == clock_type::time_point::max()) {
      reaper.cancel();
      return;
    }
    reaper.expires_at(next);
    reaper.async_wait([this](boost::system::error_code ec) {
      if (ec) return;  // re-armed or shut down
      std::lock_guard lock(mutex);
      reap();
    });
  }

  std::string session_json(const session& s) {
    return "{\"ID\":\"" + s.id + "\",\"Name\":\"" + json_escape(s.name) + "\",\"Node\":\"\"," +
           "\"Behavior\":\"" + s.behavior + "\",\"TTL\":\"" + s.ttl_text +
           "\",\"LockDelay\":" + std::to_string(s.lock_delay.count()) +
           ",\"Checks\":[],\"CreateIndex\":1,\"ModifyIndex\":1}";
  }

  std::string pair_json(const std::string& key, const pair& p) {
    std::string j = "[{\"LockIndex\":" + std::to_string(p.lock_index) + ",\"Key\":\"" +
                    json_escape(key) + "\",\"Flags\":0,\"Value\":\"" + base64(p.value) + "\"";
    if (!p.session.empty()) j += ",\"Session\":\"" + p.session + "\"";
    j += ",\"CreateIndex\":" + std::to_string(p.create_index) +
         ",\"ModifyIndex\":" + std::to_string(p.modify_index) + "}]";
    return j;
  }

  asio::awaitable<http::response<http::string_body>> handle(
      const http::request<http::string_body>& req) {
    http::response<http::string_body> res{http::status::ok, req.version()};
    res.set(http::field::content_type, "application/json");
    res.keep_alive(req.keep_alive());
    auto reply = [&](http::status status, std::string body) {
      res.result(status);
      res.body() = std::move(body);
    };

    const std::string target(req.target());
    const std::size_t qpos = target.find('?');
    const std::string path = target.substr(0, qpos);
    const auto query = parse_query(qpos == std::string::npos ? "" : target.substr(qpos + 1));
    const bool put = req.method() == http::verb::put;

    std::unique_lock lock(mutex);
    {
      const std::string method(req.method_string());
      const std::size_t cut = path.find('/', 4);
      const std::size_t cut2 = cut == std::string::npos ? cut : path.find('/', cut + 1);
      ++counts[method + " " + path.substr(0, cut2)];
    }

    if (put && path == "/v1/catalog/register") {
      reply(http::status::ok, "true");
    } else if (put && path == "/v1/session/create") {
      session s;
      s.id = new_id();
      s.name = json_field(req.body(), "Name");
      s.behavior = json_field(req.body(), "Behavior");
      if (s.behavior.empty()) s.behavior = "release";
      s.ttl_text = json_field(req.body(), "TTL");
      s.ttl = s.ttl_text.empty() ? std::chrono::nanoseconds(0) : parse_duration(s.ttl_text);
      const std::string delay = json_field(req.body(), "LockDelay");
      s.lock_delay = delay.empty() ? std::chrono::seconds(15) : parse_duration(delay);
      if (s.ttl.count() > 0)
        s.expires = clock_type::now() + std::chrono::duration_cast<clock_type::duration>(s.ttl);
      sessions[s.id] = s;
      ++index;
      reap();
      reply(http::status::ok, "{\"ID\":\"" + s.id + "\"}");
    } else if (put && path.rfind("/v1/session/renew/", 0) == 0) {
      auto it = sessions.find(path.substr(std::strlen("/v1/session/renew/")));
      if (it == sessions.end()) {
        reply(http::status::not_found, "Session id not found");
      } else {
        if (it->second.ttl.count() > 0)
          it->second.expires =
              clock_type::now() + std::chrono::duration_cast<clock_type::duration>(it->second.ttl);
        reap();
        reply(http::status::ok, "[" + session_json(it->second) + "]");
      }
    } else if (put && path.rfind("/v1/session/destroy/", 0) == 0) {
      invalidate(path.substr(std::strlen("/v1/session/destroy/")));
      reap();
      reply(http::status::ok, "true");
    } else if (path.rfind("/v1/kv/", 0) == 0) {
      const std::string key = path.substr(std::strlen("/v1/kv/"));
      if (req.method() == http::verb::get) {
        std::uint64_t wanted = 0;
        if (auto q = query.find("index"); q != query.end() && !q->second.empty())
          wanted = std::stoull(q->second);
        auto wait = std::chrono::nanoseconds(std::chrono::minutes(5));
        if (auto q = query.find("wait"); q != query.end() && !q->second.empty())
          wait = std::min(parse_duration(q->second),
                          std::chrono::nanoseconds(std::chrono::minutes(10)));
        const auto until =
            clock_type::now() + std::chrono::duration_cast<clock_type::duration>(wait);
        if (wanted > 0) {
          asio::steady_timer timer(io);
          auto where = waiters.insert(waiters.end(), &timer);
          while (index <= wanted && clock_type::now() < until) {
            timer.expires_at(until);
            lock.unlock();
            boost::system::error_code ec;
            co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
            lock.lock();
          }
          waiters.erase(where);
        }
        auto it = kv.find(key);
        if (it == kv.end())
          reply(http::status::not_found, "");
        else
          reply(http::status::ok, pair_json(key, it->second));
      } else if (put && query.count("acquire")) {
        const std::string id = query.at("acquire");
        auto delay = lock_delay_until.find(key);
        auto existing = kv.find(key);
        if (!sessions.count(id)) {
          reply(http::status::internal_server_error, "invalid session \"" + id + "\"");
        } else if (existing != kv.end() && !existing->second.session.empty() &&
                   existing->second.session != id) {
          reply(http::status::ok, "false");
        } else if (delay != lock_delay_until.end() && delay->second > clock_type::now()) {
          reply(http::status::ok, "false");
        } else {
          pair& p = kv[key];
          if (p.create_index == 0) p.create_index = index + 1;
          if (p.session != id) ++p.lock_index;
          p.session = id;
          p.value = req.body();
          p.modify_index = index + 1;
          kv_changed();
          reply(http::status::ok, "true");
        }
      } else if (put && query.count("release")) {
        const std::string id = query.at("release");
        auto existing = kv.find(key);
        if (existing == kv.end() || existing->second.session != id) {
          reply(http::status::ok, "false");
        } else {
          existing->second.session.clear();
          if (!req.body().empty()) existing->second.value = req.body();
          existing->second.modify_index = index + 1;
          kv_changed();
          reply(http::status::ok, "true");
        }
      } else if (put) {
        // A plain put (LiteFS stores its cluster ID at <key>/clusterid), with optional cas.
        auto existing = kv.find(key);
        bool allowed = true;
        if (auto q = query.find("cas"); q != query.end()) {
          const std::uint64_t cas = std::stoull(q->second);
          allowed = cas == 0 ? existing == kv.end()
                             : existing != kv.end() && existing->second.modify_index == cas;
        }
        if (allowed) {
          pair& p = kv[key];
          if (p.create_index == 0) p.create_index = index + 1;
          p.value = req.body();
          p.modify_index = index + 1;
          kv_changed();
        }
        reply(http::status::ok, allowed ? "true" : "false");
      } else if (req.method() == http::verb::delete_) {
        if (kv.erase(key)) kv_changed();
        reply(http::status::ok, "true");
      } else {
        reply(http::status::method_not_allowed, "not supported by the stand-in");
      }
    } else {
      reply(http::status::not_found, "not supported by the stand-in");
    }
    res.set("X-Consul-Index", std::to_string(index));
    res.set("X-Consul-KnownLeader", "true");
    res.set("X-Consul-LastContact", "0");
    res.prepare_payload();
    co_return res;
  }

  asio::awaitable<void> serve(tcp::socket socket) {
    boost::beast::flat_buffer buffer;
    for (;;) {
      http::request<http::string_body> req;
      boost::system::error_code ec;
      co_await http::async_read(socket, buffer, req, asio::redirect_error(asio::use_awaitable, ec));
      if (ec) break;
      auto res = co_await handle(req);
      co_await http::async_write(socket, res, asio::redirect_error(asio::use_awaitable, ec));
      if (ec || !res.keep_alive()) break;
    }
    boost::system::error_code ignored;
    socket.shutdown(tcp::socket::shutdown_both, ignored);
  }

  asio::awaitable<void> accept_loop() {
    for (;;) {
      boost::system::error_code ec;
      tcp::socket socket =
          co_await acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
      if (ec) co_return;
      asio::co_spawn(io, serve(std::move(socket)), asio::detached);
    }
  }
};

consul_standin::consul_standin() : impl_(std::make_unique<impl>()) {
  const tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), 0);
  impl_->acceptor.open(ep.protocol());
  impl_->acceptor.bind(ep);
  impl_->acceptor.listen();
  port_ = impl_->acceptor.local_endpoint().port();
  asio::co_spawn(impl_->io, impl_->accept_loop(), asio::detached);
  impl_->thread = std::thread([this] { impl_->io.run(); });
}

consul_standin::~consul_standin() {
  impl_->io.stop();
  impl_->thread.join();
}

std::string consul_standin::url() const { return "http://127.0.0.1:" + std::to_string(port_); }

std::optional<std::string> consul_standin::holder(const std::string& key) {
  std::lock_guard lock(impl_->mutex);
  auto it = impl_->kv.find(key);
  if (it == impl_->kv.end() || it->second.session.empty()) return std::nullopt;
  return it->second.session;
}

std::uint64_t consul_standin::index() {
  std::lock_guard lock(impl_->mutex);
  return impl_->index;
}

std::map<std::string, int> consul_standin::request_counts() {
  std::lock_guard lock(impl_->mutex);
  return impl_->counts;
}

}  // namespace fwd_test
