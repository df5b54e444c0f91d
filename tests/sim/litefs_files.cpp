// The exact bytes of LiteFS's mount files, and replacing them atomically.
#include "litefs_sim.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <system_error>

namespace fwd_sim {

std::uint64_t next_checksum(std::uint64_t checksum, std::uint64_t txid) noexcept {
  // One splitmix64 step: cheap, deterministic, and every TXID changes every bit.
  std::uint64_t z = (checksum ^ txid) + 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

std::string format_position(const db_position& pos) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%016" PRIx64 "/%016" PRIx64 "\n", pos.txid,
                pos.checksum);
  return buf;
}

std::string format_lag(std::int32_t milliseconds) {
  // LiteFS formats with Go's "%+010d\n" (the width counts the sign: 0 gives
  // "+000000000\n") and declares the file 11 bytes long, so the kernel hands readers
  // at most 11 bytes: a wider value such as +2147483647 loses its newline.
  char buf[24];
  std::snprintf(buf, sizeof buf, "%+010d\n", static_cast<int>(milliseconds));
  std::string text = buf;
  text.resize(std::min<std::size_t>(text.size(), 11));
  return text;
}

namespace {

bool parse_hex16(std::string_view text, std::uint64_t& out) {
  if (text.size() != 16) return false;
  std::uint64_t value = 0;
  for (char c : text) {
    value <<= 4;
    if (c >= '0' && c <= '9') {
      value |= static_cast<std::uint64_t>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      value |= static_cast<std::uint64_t>(c - 'a' + 10);
    } else {
      return false;
    }
  }
  out = value;
  return true;
}

}  // namespace

std::optional<db_position> read_position(const std::filesystem::path& pos_file) {
  std::ifstream in(pos_file, std::ios::binary);
  if (!in) return std::nullopt;
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.size() != 34 || text[16] != '/' || text[33] != '\n') return std::nullopt;
  db_position pos;
  if (!parse_hex16(std::string_view(text).substr(0, 16), pos.txid) ||
      !parse_hex16(std::string_view(text).substr(17, 16), pos.checksum)) {
    return std::nullopt;
  }
  return pos;
}

void write_file_atomically(const std::filesystem::path& file, std::string_view contents) {
  // The temporary name is unique per process and call, so concurrent writers (the
  // shim in node processes, the replicator) never share one; rename() is atomic.
  static std::atomic<unsigned long> sequence{0};
  // Appended piece by piece: GCC 12 at -O3 reports a false -Wrestrict for
  // `"." + std::string&&` (the inlined insert at position 0).
  std::string name = ".";
  name += file.filename().string();
  name += ".tmp.";
  name += std::to_string(::getpid());
  name += '.';
  name += std::to_string(sequence.fetch_add(1));
  const std::filesystem::path temp = file.parent_path() / name;
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    throw std::system_error(errno, std::generic_category(),
                            "fwd_sim: cannot create " + temp.string());
  }
  std::size_t done = 0;
  while (done < contents.size()) {
    const ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      ::unlink(temp.c_str());
      throw std::system_error(err, std::generic_category(),
                              "fwd_sim: cannot write " + temp.string());
    }
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
  if (::rename(temp.c_str(), file.c_str()) != 0) {
    const int err = errno;
    ::unlink(temp.c_str());
    throw std::system_error(err, std::generic_category(),
                            "fwd_sim: cannot rename onto " + file.string());
  }
}

}  // namespace fwd_sim
