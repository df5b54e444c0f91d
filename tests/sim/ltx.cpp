// The simulation's per-transaction files (see ltx.hpp).
#include "ltx.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <system_error>

namespace fwd_sim::ltx {
namespace {

constexpr char magic[8] = {'F', 'W', 'D', 'S', 'L', 'T', 'X', '1'};
constexpr char trailer[8] = {'F', 'W', 'D', 'S', 'E', 'N', 'D', '1'};

// The fixed part at the start of a file, in this machine's byte order (the files never
// leave it).
struct header {
  char magic[8];
  std::uint64_t txid;
  std::uint64_t pre_checksum;
  std::uint64_t post_checksum;
  std::uint32_t page_size;
  std::uint32_t commit;
  std::uint32_t page_count;
  std::uint32_t reserved;
};
static_assert(sizeof(header) == 48);

bool write_all(int fd, const void* data, std::size_t size) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

bool read_all(int fd, void* data, std::size_t size) {
  auto* p = static_cast<char*>(data);
  while (size > 0) {
    const ssize_t n = ::read(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

std::string temporary_name(const std::filesystem::path& dir) {
  static std::atomic<unsigned long> sequence{0};
  std::string name = ".tmp.";
  name += std::to_string(::getpid());
  name += '.';
  name += std::to_string(sequence.fetch_add(1));
  return (dir / name).string();
}

}  // namespace

std::filesystem::path directory_of(const std::filesystem::path& db_path) {
  const std::filesystem::path mount = db_path.parent_path();
  return mount.parent_path() / ".fwd-sim-ltx" / mount.filename() / db_path.filename();
}

std::filesystem::path file_of(const std::filesystem::path& dir, std::uint64_t txid) {
  char name[32];
  std::snprintf(name, sizeof name, "%016" PRIx64 ".ltx", txid);
  return dir / name;
}

void write(const std::filesystem::path& dir, const record& r) {
  const std::string temp = temporary_name(dir);
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0 && errno == ENOENT) {
    std::error_code ignored;
    std::filesystem::create_directories(dir, ignored);
    fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  }
  if (fd < 0) {
    throw std::system_error(errno, std::generic_category(), "fwd_sim: cannot create " + temp);
  }
  header h{};
  std::memcpy(h.magic, magic, sizeof magic);
  h.txid = r.txid;
  h.pre_checksum = r.pre_checksum;
  h.post_checksum = r.post_checksum;
  h.page_size = r.page_size;
  h.commit = r.commit;
  h.page_count = static_cast<std::uint32_t>(r.page_numbers.size());
  const bool ok = write_all(fd, &h, sizeof h) &&
                  write_all(fd, r.page_numbers.data(), r.page_numbers.size() * 4) &&
                  write_all(fd, r.pages.data(), r.pages.size()) &&
                  write_all(fd, trailer, sizeof trailer);
  const int err = errno;
  ::close(fd);
  if (!ok) {
    ::unlink(temp.c_str());
    throw std::system_error(err, std::generic_category(), "fwd_sim: cannot write " + temp);
  }
  const std::string target = file_of(dir, r.txid).string();
  if (::rename(temp.c_str(), target.c_str()) != 0) {
    const int rename_err = errno;
    ::unlink(temp.c_str());
    throw std::system_error(rename_err, std::generic_category(),
                            "fwd_sim: cannot rename onto " + target);
  }
}

std::optional<record> read(const std::filesystem::path& dir, std::uint64_t txid) {
  const int fd = ::open(file_of(dir, txid).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::optional<record> out;
  struct stat st {};
  header h{};
  if (::fstat(fd, &st) == 0 && read_all(fd, &h, sizeof h) &&
      std::memcmp(h.magic, magic, sizeof magic) == 0 && h.txid == txid &&
      h.page_size >= 512 && h.page_size <= 65536) {
    const std::uint64_t expected = sizeof h + std::uint64_t{h.page_count} * (4 + h.page_size) +
                                   sizeof trailer;
    if (static_cast<std::uint64_t>(st.st_size) == expected) {
      record r;
      r.txid = h.txid;
      r.pre_checksum = h.pre_checksum;
      r.post_checksum = h.post_checksum;
      r.page_size = h.page_size;
      r.commit = h.commit;
      r.page_numbers.resize(h.page_count);
      r.pages.resize(std::size_t{h.page_count} * h.page_size);
      char end[sizeof trailer];
      if (read_all(fd, r.page_numbers.data(), r.page_numbers.size() * 4) &&
          read_all(fd, r.pages.data(), r.pages.size()) && read_all(fd, end, sizeof end) &&
          std::memcmp(end, trailer, sizeof trailer) == 0) {
        out = std::move(r);
      }
    }
  }
  ::close(fd);
  return out;
}

void link(const std::filesystem::path& from, const std::filesystem::path& to, std::uint64_t txid) {
  const std::string source = file_of(from, txid).string();
  const std::string temp = temporary_name(to);
  int rc = ::link(source.c_str(), temp.c_str());
  if (rc != 0 && errno == ENOENT && ::access(source.c_str(), F_OK) == 0) {
    std::error_code ignored;
    std::filesystem::create_directories(to, ignored);
    rc = ::link(source.c_str(), temp.c_str());
  }
  if (rc != 0) {
    throw std::system_error(errno, std::generic_category(), "fwd_sim: cannot link " + source);
  }
  const std::string target = file_of(to, txid).string();
  if (::rename(temp.c_str(), target.c_str()) != 0) {
    const int err = errno;
    ::unlink(temp.c_str());
    throw std::system_error(err, std::generic_category(), "fwd_sim: cannot rename onto " + target);
  }
}

void clear(const std::filesystem::path& dir) {
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
}

}  // namespace fwd_sim::ltx
