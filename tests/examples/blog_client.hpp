#pragma once

// A client of the blog example for its tests: one HTTP request with a real curl (and its
// cookie jar), and the few JSON fields the tests read.

#include <catch2/catch.hpp>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <string>

namespace blog_client {


struct http_answer {
  int status = 0;
  std::string headers;
  std::string body;
};

inline std::string quoted(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

/// One request with curl (cookies read from and written to `jar` when it is not empty).
inline http_answer curl(const std::string& method, const std::string& url, const std::string& jar = {},
                 const std::string& body = {}) {
  const auto dir = std::filesystem::temp_directory_path();
  static std::atomic<int> counter{0};
  const auto headers = dir / ("fwd-blog-h-" + std::to_string(::getpid()) + "-" + std::to_string(++counter));
  std::string command = "curl -sS --max-time 20 -X " + method + " -D " + quoted(headers.string());
  if (!jar.empty()) command += " -b " + quoted(jar) + " -c " + quoted(jar);
  if (!body.empty()) command += " -H 'Content-Type: application/json' --data-binary " + quoted(body);
  command += " -w '\\n%{http_code}' " + quoted(url);
  http_answer answer;
  FILE* pipe = ::popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::string out;
  char buffer[4096];
  std::size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) out.append(buffer, n);
  REQUIRE(::pclose(pipe) == 0);
  const auto last = out.rfind('\n');
  REQUIRE(last != std::string::npos);
  answer.status = std::stoi(out.substr(last + 1));
  answer.body = out.substr(0, last);
  if (FILE* h = std::fopen(headers.c_str(), "r")) {
    while ((n = std::fread(buffer, 1, sizeof buffer, h)) > 0) answer.headers.append(buffer, n);
    std::fclose(h);
  }
  std::filesystem::remove(headers);
  return answer;
}

inline bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

inline std::string json_field(const std::string& body, const std::string& name) {
  const auto at = body.find("\"" + name + "\":");
  if (at == std::string::npos) return {};
  auto begin = at + name.size() + 3;
  if (body[begin] == '"') {
    ++begin;
    return body.substr(begin, body.find('"', begin) - begin);
  }
  return body.substr(begin, body.find_first_of(",}", begin) - begin);
}

}  // namespace blog_client
