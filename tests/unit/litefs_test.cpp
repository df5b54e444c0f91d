#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <fwd/litefs/detail/event_line.hpp>
#include <fwd/litefs/mount.hpp>
#include <fwd/litefs/path_check.hpp>
#include <string>
#include <string_view>

namespace fs = std::filesystem;
namespace litefs = fwd::litefs;
using namespace std::string_literals;
using std::chrono::milliseconds;

namespace {

// A fresh directory under the system's temporary directory, removed with its contents.
class temp_dir {
 public:
  temp_dir() {
    std::string pattern = (fs::temp_directory_path() / "fwd-litefs-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  ~temp_dir() {
    // Tests make read-only directories (a replica's mount root): make them removable.
    std::error_code ec;
    fs::permissions(path_, fs::perms::owner_all, fs::perm_options::add, ec);
    for (auto it = fs::recursive_directory_iterator(path_, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      std::error_code ignored;
      if (it->is_directory(ignored) && !it->is_symlink(ignored)) {
        fs::permissions(it->path(), fs::perms::owner_all, fs::perm_options::add, ignored);
      }
    }
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void write_file(const fs::path& p, std::string_view bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

void set_mode(const fs::path& p, mode_t mode) { REQUIRE(::chmod(p.c_str(), mode) == 0); }

// A directory laid out as a LiteFS mount: `.lag` with `lag_bytes`, optional `.primary`,
// root mode `mode`.
fs::path make_mount(const temp_dir& tmp, std::string_view lag_bytes, const char* primary_bytes,
                    mode_t mode) {
  const fs::path mount = tmp.path() / "litefs";
  fs::create_directories(mount);
  write_file(mount / ".lag", lag_bytes);
  if (primary_bytes != nullptr) write_file(mount / ".primary", primary_bytes);
  set_mode(mount, mode);
  return mount;
}

bool contains(const std::string& haystack, std::string_view needle) {
  return haystack.find(needle) != std::string::npos;
}

// A failed call's error_code and diagnostics message.
struct failure {
  boost::system::error_code code;
  std::string message;
};

// Parses `bytes` with `parse` (an error_code&, diagnostics& overload) and returns the failure.
template <class Parse>
failure failure_of(Parse parse, std::string_view bytes) {
  failure f;
  fwd::diagnostics diag;
  parse(bytes, f.code, diag);
  f.message = diag.message();
  return f;
}

auto position_parser = [](std::string_view b, boost::system::error_code& ec,
                          fwd::diagnostics& diag) {
  return litefs::parse_position(b, ec, diag, "/litefs/blog.db-pos");
};
auto lag_parser = [](std::string_view b, boost::system::error_code& ec, fwd::diagnostics& diag) {
  return litefs::parse_lag(b, ec, diag, "/litefs/.lag");
};
auto primary_parser = [](std::string_view b, boost::system::error_code& ec,
                         fwd::diagnostics& diag) {
  return litefs::parse_primary(b, ec, diag, "/litefs/.primary");
};

// check_database_path's two forms, as one value: the mount, or the code and message.
struct path_checked {
  boost::system::error_code code;
  std::string message;
  fs::path mount;
  bool ok() const { return !code; }
};

path_checked check_path(const fs::path& db, const litefs::path_check_options& options = {}) {
  path_checked r;
  fwd::diagnostics diag;
  r.mount = litefs::check_database_path(db, options, r.code, diag);
  r.message = diag.message();
  return r;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// <db>-pos
// ---------------------------------------------------------------------------------------

TEST_CASE("parse_position reads LiteFS's TXID and checksum from the exact 34 bytes") {
  const auto p = litefs::parse_position("00000000002df417/ce552e44f23fbbdd\n");
  CHECK(p.txid == 0x2df417u);
  CHECK(p.checksum == 0xce552e44f23fbbddu);
  const auto max = litefs::parse_position("ffffffffffffffff/0000000000000000\n");
  CHECK(max.txid == 0xffffffffffffffffu);
  CHECK(max.checksum == 0u);
}

TEST_CASE("format_position writes the bytes parse_position reads") {
  const litefs::position p{0x2df417, 0xce552e44f23fbbdd};
  CHECK(litefs::format_position(p) == "00000000002df417/ce552e44f23fbbdd\n");
  CHECK(litefs::parse_position(litefs::format_position(p)) == p);
}

TEST_CASE(
    "parse_position rejects every malformed <db>-pos as bad_litefs_file naming the file and the "
    "bytes") {
  struct bad_case {
    const char* what;
    std::string bytes;
    const char* in_message;
  };
  const bad_case cases[] = {
      {"empty", "", "is empty"},
      {"short", "00000000002df417/ce55\n", "byte 21 is '\\n'"},
      {"missing newline", "00000000002df417/ce552e44f23fbbdd", "the final newline is missing"},
      {"long (trailing garbage)", "00000000002df417/ce552e44f23fbbdd\nxyz",
       "3 unexpected bytes follow the newline"},
      {"uppercase hex", "00000000002DF417/ce552e44f23fbbdd\n", "uppercase hex"},
      {"non-hex", "00000000002dg417/ce552e44f23fbbdd\n", "byte 12 is 'g'"},
      {"missing slash", "00000000002df417 ce552e44f23fbbdd\n", "expected '/'"},
      {"NUL byte", "00000000002df417/ce552e44f23fbbd\0\n"s, "\\x00"},
      {"huge", std::string(100000, 'a'), "first 48 shown"},
      {"hex too long", "000000000002df417/ce552e44f23fbbdd\n", "byte 16 is '7'"},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    const auto f = failure_of(position_parser, c.bytes);
    REQUIRE(f.code == fwd::errc::bad_litefs_file);
    CHECK(contains(f.message, "/litefs/blog.db-pos"));
    CHECK(contains(f.message, c.in_message));
    CHECK(contains(f.message, "%016x/%016x"));
    // The escaped bytes never print raw control characters.
    CHECK(f.message.find('\0') == std::string::npos);
  }
}

TEST_CASE("parse_position's two forms agree: error_code& (with diagnostics&) and throwing") {
  boost::system::error_code ec;
  const auto p = litefs::parse_position("not a position", ec);
  CHECK(ec == fwd::errc::bad_litefs_file);
  CHECK(p == litefs::position{});

  const std::string_view bad = "0000000000000001/000000000000000X\n";
  fwd::diagnostics diag;
  CHECK(litefs::parse_position(bad, ec, diag, "/litefs/x.db-pos") == litefs::position{});
  CHECK(ec == fwd::errc::bad_litefs_file);
  CHECK(contains(diag.message(), "/litefs/x.db-pos"));
  CHECK(contains(diag.message(), "byte 32 is 'X'"));
  try {
    litefs::parse_position(bad, "/litefs/x.db-pos");
    FAIL("parse_position did not throw");
  } catch (const fwd::error& e) {
    CHECK(e.code() == fwd::errc::bad_litefs_file);
    CHECK(e.get_diagnostics() == diag);
    CHECK(contains(e.what(), "/litefs/x.db-pos"));
    CHECK(contains(e.what(), "byte 32 is 'X'"));
  }

  // A success clears what an earlier failure left.
  CHECK(litefs::parse_position("0000000000000001/0000000000000002\n", ec, diag).txid == 1);
  CHECK_FALSE(ec);
  CHECK(diag.message().empty());
  boost::system::error_code ok;
  CHECK(litefs::parse_position("0000000000000001/0000000000000002\n", ok).txid == 1);
  CHECK_FALSE(ok);
}

// ---------------------------------------------------------------------------------------
// .lag
// ---------------------------------------------------------------------------------------

TEST_CASE("parse_lag reads the bytes LiteFS writes with Go's %+010d") {
  CHECK(litefs::parse_lag("+000000000\n") == milliseconds{0});     // the primary
  CHECK(litefs::parse_lag("+000001234\n") == milliseconds{1234});  // a replica behind by 1.2 s
  CHECK(litefs::parse_lag("-000000005\n") == milliseconds{-5});    // clock skew
  CHECK(litefs::parse_lag("+1000000000\n") == milliseconds{1000000000});
  CHECK(litefs::parse_lag("+2147483647\n") == litefs::lag_never_synced);
  CHECK(litefs::never_synced(litefs::parse_lag("+2147483647\n")));
  CHECK_FALSE(litefs::never_synced(litefs::parse_lag("+000000000\n")));
}

TEST_CASE("parse_lag accepts ten zero-padded digits and the newline the kernel cuts at 11 bytes") {
  CHECK(litefs::parse_lag("+0000000000\n") == milliseconds{0});
  CHECK(litefs::parse_lag("+0000000042\n") == milliseconds{42});
  // LiteFS advertises .lag as 11 bytes; "+2147483647\n" is 12, so a read may stop before '\n'.
  CHECK(litefs::parse_lag("+2147483647") == litefs::lag_never_synced);
}

TEST_CASE("format_lag writes LiteFS's exact .lag bytes") {
  CHECK(litefs::format_lag(milliseconds{0}) == "+000000000\n");
  CHECK(litefs::format_lag(milliseconds{0}).size() == 11);
  CHECK(litefs::format_lag(milliseconds{-5}) == "-000000005\n");
  CHECK(litefs::format_lag(litefs::lag_never_synced) == "+2147483647\n");
  CHECK(litefs::parse_lag(litefs::format_lag(milliseconds{987})) == milliseconds{987});
}

TEST_CASE(
    "parse_lag rejects every malformed .lag as bad_litefs_file naming the file and the bytes") {
  struct bad_case {
    const char* what;
    std::string bytes;
    const char* in_message;
  };
  const bad_case cases[] = {
      {"empty", "", "is empty"},
      {"no sign", "0000000000\n", "expected '+' or '-'"},
      {"short", "+00000\n", "only 5 digits"},
      {"missing newline", "+000000000", "the final newline is missing"},
      {"too many digits", "+000000000000\n", "more than 10 digits"},
      {"non-digit", "+00000x000\n", "byte 6 is 'x'"},
      {"trailing garbage", "+000000000\nabc", "3 unexpected bytes follow the newline"},
      {"space instead of zero padding", "+       12\n", "byte 1 is ' '"},
      {"out of int32 range", "+9999999999\n", "outside a 32-bit integer"},
      {"NUL", "+00000000\0\n"s, "\\x00"},
      {"huge", std::string(100000, '+'), "first 48 shown"},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    const auto f = failure_of(lag_parser, c.bytes);
    REQUIRE(f.code == fwd::errc::bad_litefs_file);
    CHECK(contains(f.message, "/litefs/.lag"));
    CHECK(contains(f.message, c.in_message));
    CHECK(contains(f.message, "%+010d"));
  }
  CHECK_THROWS_AS(litefs::parse_lag("+1\n"), fwd::error);
  boost::system::error_code ec;
  litefs::parse_lag("", ec);
  CHECK(ec == fwd::errc::bad_litefs_file);
}

// ---------------------------------------------------------------------------------------
// .primary
// ---------------------------------------------------------------------------------------

TEST_CASE("parse_primary returns the trimmed lease hostname") {
  CHECK(litefs::parse_primary("e829424aee6108\n") == "e829424aee6108");
  CHECK(litefs::parse_primary("  node-1.internal \r\n\t") == "node-1.internal");
  CHECK(litefs::parse_primary("no-newline") == "no-newline");
}

TEST_CASE("parse_primary rejects empty, control bytes, NUL and huge contents as bad_litefs_file") {
  struct bad_case {
    const char* what;
    std::string bytes;
    const char* in_message;
  };
  const bad_case cases[] = {
      {"empty", "", "no hostname"},
      {"only whitespace", " \n\t\n", "no hostname"},
      {"NUL inside", "node\0one\n"s, "byte 4 is '\\x00'"},
      {"control byte inside", "node\x01one\n", "'\\x01'"},
      {"two lines", "node-1\nnode-2\n", "byte 6 is '\\n'"},
      {"space inside", "node one\n", "byte 4 is ' '"},
      {"huge", std::string(5000, 'h'), "more than 4096 bytes"},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    const auto f = failure_of(primary_parser, c.bytes);
    REQUIRE(f.code == fwd::errc::bad_litefs_file);
    CHECK(contains(f.message, "/litefs/.primary"));
    CHECK(contains(f.message, c.in_message));
    CHECK(contains(f.message, "lease.hostname"));
  }
  CHECK_THROWS_AS(litefs::parse_primary("\n"), fwd::error);
}

// ---------------------------------------------------------------------------------------
// /proc/self/mounts
// ---------------------------------------------------------------------------------------

TEST_CASE("an /events tx line of the database yields its position, and no other line does") {
  using fwd::litefs::detail::event_kind;
  using fwd::litefs::detail::parse_event_line;
  const std::string tx =
      R"({"type":"tx","db":"app.db","data":{"txID":"0000000000000003","postApplyChecksum":)"
      R"("a7dd8f28ea1b904d","pageSize":4096,"commit":2,"timestamp":"2026-12-02T12:31:30.757Z"}})";
  const auto e = parse_event_line(tx, "app.db");
  REQUIRE(e.kind == event_kind::tx);
  CHECK(e.pos.txid == 3);
  CHECK(e.pos.checksum == 0xa7dd8f28ea1b904dULL);
  CHECK(parse_event_line(tx, "app.db2").kind == event_kind::tx_other_db);
  CHECK(parse_event_line(tx, "app").kind == event_kind::tx_other_db);
  CHECK(parse_event_line(R"({"type":"init","data":{"isPrimary":true}})", "app.db").kind == event_kind::other);
  CHECK(parse_event_line(R"({"type":"primaryChange","data":{"isPrimary":false,"hostname":"node1"}})", "app.db")
            .kind == event_kind::other);
  // Not the exact form: the caller reads the mount instead.
  CHECK(parse_event_line(R"({"type":"tx","data":{"db":"app.db","txID":"0000000000000002"}})", "app.db").kind ==
        event_kind::other);
  std::string upper = tx;
  upper.replace(upper.find("a7dd"), 4, "A7DD");
  CHECK(parse_event_line(upper, "app.db").kind == event_kind::other);
  std::string short_txid = tx;
  short_txid.replace(short_txid.find("0000000000000003"), 16, "003");
  CHECK(parse_event_line(short_txid, "app.db").kind == event_kind::other);
  CHECK(parse_event_line(tx.substr(0, 60), "app.db").kind == event_kind::other);
  std::string escaped = tx;
  escaped.replace(escaped.find("app.db"), 6, R"(a"p.db)");
  CHECK(parse_event_line(escaped, "app.db").kind == event_kind::other);
}

TEST_CASE("parse_mounts reads /proc/self/mounts lines and decodes octal escapes") {
  const std::string text =
      "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n"
      "litefs /litefs fuse rw,nosuid,nodev,relatime,user_id=0,group_id=0 0 0\n"
      "/dev/sda1 /mnt/my\\040disk\\134x ext4 rw 0 0\n"
      "garbage\n"
      "\n"
      "tmpfs /tmp tmpfs rw";
  const auto entries = litefs::parse_mounts(text);
  REQUIRE(entries.size() == 4);
  CHECK(entries[1].source == "litefs");
  CHECK(entries[1].mount_point == fs::path("/litefs"));
  CHECK(entries[1].type == "fuse");
  CHECK(entries[1].options == "rw,nosuid,nodev,relatime,user_id=0,group_id=0");
  CHECK(litefs::is_litefs_mount(entries[1]));
  CHECK_FALSE(litefs::is_litefs_mount(entries[0]));
  CHECK(entries[2].mount_point == fs::path("/mnt/my disk\\x"));
  CHECK(entries[3].mount_point == fs::path("/tmp"));
  CHECK(entries[3].options == "rw");
}

TEST_CASE("find_litefs_mount finds LiteFS's FUSE mount and nothing else") {
  CHECK(litefs::find_litefs_mount("litefs /var/lib/app\\040data fuse rw 0 0\n") ==
        fs::path("/var/lib/app data"));
  CHECK(litefs::find_litefs_mount("litefs /l fuse.litefs rw 0 0\n") == fs::path("/l"));
  // A FUSE mount of another filesystem, or a non-FUSE mount from a device named litefs.
  CHECK_FALSE(
      litefs::find_litefs_mount("sshfs /remote fuse.sshfs rw 0 0\nlitefs /x ext4 rw 0 0\n"));
  CHECK_FALSE(litefs::find_litefs_mount(""));
}

// ---------------------------------------------------------------------------------------
// Files on a mount directory
// ---------------------------------------------------------------------------------------

TEST_CASE("read_position reads <mount>/<db>-pos and names the file when it is wrong") {
  temp_dir tmp;
  write_file(tmp.path() / "blog.db-pos", "00000000000000ff/0123456789abcdef\n");
  const auto p = litefs::read_position(tmp.path(), "blog.db");
  CHECK(p.txid == 0xff);
  CHECK(p.checksum == 0x0123456789abcdef);

  write_file(tmp.path() / "bad.db-pos", "00000000000000FF/0123456789abcdef\n");
  boost::system::error_code bad_ec;
  fwd::diagnostics diag;
  litefs::read_position(tmp.path(), "bad.db", bad_ec, diag);
  CHECK(bad_ec == fwd::errc::bad_litefs_file);
  CHECK(contains(diag.message(), (tmp.path() / "bad.db-pos").string()));
  try {
    litefs::read_position(tmp.path(), "bad.db");
    FAIL("read_position did not throw");
  } catch (const fwd::error& e) {
    CHECK(e.code() == fwd::errc::bad_litefs_file);
    CHECK(e.get_diagnostics().message() == diag.message());
  }

  boost::system::error_code ec;
  litefs::read_position(tmp.path(), "missing.db", ec);
  CHECK(ec == boost::system::errc::no_such_file_or_directory);

  for (const char* name : {"", "..", "a/b", "."}) {
    INFO(name);
    litefs::read_position(tmp.path(), name, ec);
    CHECK(ec == fwd::errc::bad_argument);
  }
}

TEST_CASE("reading a control file larger than 4 KiB is an error, not an allocation") {
  temp_dir tmp;
  write_file(tmp.path() / "blog.db-pos", std::string(1 << 20, '0'));
  boost::system::error_code ec;
  fwd::diagnostics diag;
  litefs::read_position(tmp.path(), "blog.db", ec, diag);
  CHECK(ec == fwd::errc::bad_litefs_file);
  CHECK(contains(diag.message(), "larger than 4096 bytes"));
}

TEST_CASE("read_lag reads .lag, and a directory without .lag is not_litefs") {
  temp_dir tmp;
  write_file(tmp.path() / ".lag", "+000000250\n");
  CHECK(litefs::read_lag(tmp.path()) == milliseconds{250});
  temp_dir empty;
  boost::system::error_code ec;
  litefs::read_lag(empty.path(), ec);
  CHECK(ec == fwd::errc::not_litefs);
  CHECK_THROWS_AS(litefs::read_lag(empty.path()), fwd::error);
}

// ---------------------------------------------------------------------------------------
// Role
// ---------------------------------------------------------------------------------------

TEST_CASE("read_role: a .primary naming a host makes this node a replica of that host") {
  temp_dir tmp;
  const auto mount = make_mount(tmp, "+000000012\n", "e829424aee6108\n", 0555);
  const auto r = litefs::read_role(mount);
  CHECK(r.kind == litefs::role_kind::replica);
  CHECK(r.primary_hostname == "e829424aee6108");
  CHECK_FALSE(r.reason.empty());
}

TEST_CASE("read_role trims the hostname in .primary") {
  temp_dir tmp;
  const auto mount = make_mount(tmp, "+000000012\n", "  node-a.internal\r\n", 0555);
  const auto r = litefs::read_role(mount);
  CHECK(r.kind == litefs::role_kind::replica);
  CHECK(r.primary_hostname == "node-a.internal");
}

TEST_CASE("read_role: no .primary, a writable mount root and .lag 0 make this node the primary") {
  temp_dir tmp;
  SECTION("LiteFS's own bytes") {
    const auto mount = make_mount(tmp, "+000000000\n", nullptr, 0777);
    const auto r = litefs::read_role(mount);
    CHECK(r.kind == litefs::role_kind::primary);
    CHECK(r.primary_hostname.empty());
    CHECK(contains(r.reason, "0777"));
  }
  SECTION("ten zero digits") {
    const auto mount = make_mount(tmp, "+0000000000\n", nullptr, 0777);
    CHECK(litefs::read_role(mount).kind == litefs::role_kind::primary);
  }
}

TEST_CASE("read_role: no .primary on a read-only mount root is unknown, never primary") {
  temp_dir tmp;
  const auto mount = make_mount(tmp, "+000000000\n", nullptr, 0555);
  const auto r = litefs::read_role(mount);
  CHECK(r.kind == litefs::role_kind::unknown);
  CHECK(contains(r.reason, "0555"));
  CHECK(contains(r.reason, "writes must wait"));
}

TEST_CASE("read_role: no .primary with a nonzero or never-synced lag is unknown, never primary") {
  temp_dir tmp;
  SECTION("lag behind") {
    const auto mount = make_mount(tmp, "+000001500\n", nullptr, 0777);
    const auto r = litefs::read_role(mount);
    CHECK(r.kind == litefs::role_kind::unknown);
    CHECK(contains(r.reason, "1500 ms"));
  }
  SECTION("never synced") {
    const auto mount = make_mount(tmp, "+2147483647\n", nullptr, 0777);
    const auto r = litefs::read_role(mount);
    CHECK(r.kind == litefs::role_kind::unknown);
    CHECK(contains(r.reason, "never synced"));
  }
}

TEST_CASE("read_role: a directory without .lag is not_litefs, and so is a missing directory") {
  temp_dir tmp;
  write_file(tmp.path() / ".primary", "node-a\n");
  const auto r = litefs::read_role(tmp.path());
  CHECK(r.kind == litefs::role_kind::not_litefs);
  CHECK(contains(r.reason, ".lag"));
  const auto gone = litefs::read_role(tmp.path() / "no-such-dir");
  CHECK(gone.kind == litefs::role_kind::not_litefs);
}

// LiteFS re-checks .primary on every access, so it can be listed or stat'ed and then fail
// with ENOENT at open. A dangling symlink reproduces that: read_role's lstat sees it,
// open() follows it and fails with ENOENT. It must count as "absent", not as an error.
TEST_CASE(
    "read_role: .primary that vanishes between stat and read counts as absent, not an error") {
  temp_dir tmp;
  const auto mount = make_mount(tmp, "+000000000\n", nullptr, 0777);
  REQUIRE(::symlink((tmp.path() / "nowhere").c_str(), (mount / ".primary").c_str()) == 0);
  struct stat st {};
  REQUIRE(::lstat((mount / ".primary").c_str(), &st) == 0);

  boost::system::error_code ec;
  const auto r = litefs::read_role(mount, ec);
  CHECK_FALSE(ec);
  CHECK(r.kind == litefs::role_kind::primary);
  CHECK(contains(r.reason, "vanished"));

  // The same on a replica's read-only root: unknown (no primary known), still no error.
  set_mode(mount, 0555);
  const auto on_replica = litefs::read_role(mount, ec);
  CHECK_FALSE(ec);
  CHECK(on_replica.kind == litefs::role_kind::unknown);
}

TEST_CASE("read_role reports malformed or unreadable control files as errors naming the file") {
  temp_dir tmp;
  SECTION("empty .primary") {
    const auto mount = make_mount(tmp, "+000000000\n", "\n", 0555);
    boost::system::error_code ec;
    fwd::diagnostics diag;
    const auto r = litefs::read_role(mount, ec, diag);
    CHECK(ec == fwd::errc::bad_litefs_file);
    CHECK(contains(diag.message(), (mount / ".primary").string()));
    CHECK(r.kind == litefs::role_kind::unknown);
    CHECK(r.reason == diag.message());
    CHECK_THROWS_AS(litefs::read_role(mount), fwd::error);
  }
  SECTION(".primary is a directory") {
    const auto mount = make_mount(tmp, "+000000000\n", nullptr, 0777);
    fs::create_directory(mount / ".primary");
    boost::system::error_code ec;
    litefs::read_role(mount, ec);
    CHECK(ec == fwd::errc::bad_litefs_file);
  }
  SECTION("malformed .lag") {
    const auto mount = make_mount(tmp, "0\n", nullptr, 0777);
    try {
      litefs::read_role(mount);
      FAIL("read_role did not throw");
    } catch (const fwd::error& e) {
      CHECK(e.code() == fwd::errc::bad_litefs_file);
      CHECK(contains(e.what(), (mount / ".lag").string()));
      CHECK(contains(e.what(), "\"0\\n\""));
    }
  }
}

// ---------------------------------------------------------------------------------------
// The database-path check
// ---------------------------------------------------------------------------------------

TEST_CASE("check_database_path names LiteFS's data directory and suggests the FUSE mount") {
  temp_dir tmp;
  const fs::path data = tmp.path() / "var/lib/litefs";
  write_file(data / "dbs/blog.db/database", "SQLite format 3");
  fs::create_directories(data / "dbs/blog.db/ltx");
  write_file(tmp.path() / "mounts",
             "proc /proc proc rw 0 0\nlitefs /litefs fuse "
             "rw,nosuid,nodev,relatime,user_id=0,group_id=0 0 0\n");
  litefs::path_check_options options;
  options.mounts_file = tmp.path() / "mounts";

  const auto check = check_path(data / "blog.db", options);
  CHECK(check.code == fwd::errc::misconfigured_mount);
  CHECK(check.message ==
        (data / "blog.db").string() + " is inside LiteFS's data directory (" + data.string() +
            "); nothing written there replicates. Point SQLite at the FUSE mount, e.g. "
            "/litefs/blog.db");

  // The raw database file itself: the suggestion keeps the database's name.
  const auto raw = check_path(data / "dbs/blog.db/database", options);
  CHECK(raw.code == fwd::errc::misconfigured_mount);
  CHECK(contains(raw.message, "e.g. /litefs/blog.db"));

  // Even with require_fuse off: the data directory is never a LiteFS simulation.
  options.require_fuse = false;
  CHECK(check_path(data / "blog.db", options).code ==
        fwd::errc::misconfigured_mount);

  try {
    litefs::check_database_path(data / "blog.db", options);
    FAIL("check_database_path did not throw");
  } catch (const fwd::error& e) {
    CHECK(e.code() == fwd::errc::misconfigured_mount);
    CHECK(contains(e.what(), "nothing written there replicates"));
    CHECK(e.get_diagnostics().message() == check_path(data / "blog.db", options).message);
  }
}

TEST_CASE("check_database_path suggests the mount point /proc/self/mounts shows, escapes decoded") {
  temp_dir tmp;
  const fs::path data = tmp.path() / "data";
  write_file(data / "dbs/app.db/database", "");
  write_file(tmp.path() / "mounts", "litefs /srv/my\\040mount fuse rw 0 0\n");
  litefs::path_check_options options;
  options.mounts_file = tmp.path() / "mounts";
  const auto check = check_path(data / "app.db", options);
  CHECK(check.code == fwd::errc::misconfigured_mount);
  CHECK(contains(check.message, "e.g. /srv/my mount/app.db"));

  // No LiteFS mount in the table (or no table): the usual /litefs.
  options.mounts_file = tmp.path() / "no-such-mounts-file";
  CHECK(contains(check_path(data / "app.db", options).message,
                 "e.g. /litefs/app.db"));
}

TEST_CASE(
    "check_database_path does not mistake an unrelated dbs directory for LiteFS's data directory") {
  temp_dir tmp;
  const fs::path app = tmp.path() / "app";
  write_file(app / "dbs/users.sqlite", "");  // a file, not LiteFS's dbs/<name>/database
  write_file(app / ".lag", "+000000000\n");
  litefs::path_check_options options;
  options.require_fuse = false;
  const auto check = check_path(app / "blog.db", options);
  CHECK(check.ok());
  CHECK(check.message.empty());
}

TEST_CASE("check_database_path rejects a directory that is not a FUSE mount, naming its magic") {
  temp_dir tmp;
  write_file(tmp.path() / ".lag", "+000000000\n");  // .lag alone does not make a LiteFS mount
  struct statfs info {};
  REQUIRE(::statfs(tmp.path().c_str(), &info) == 0);
  REQUIRE(static_cast<std::uint64_t>(info.f_type) != litefs::fuse_super_magic);
  char magic[24];
  std::snprintf(magic, sizeof magic, "0x%llx", static_cast<unsigned long long>(info.f_type));

  litefs::path_check_options options;
  options.mounts_file = tmp.path() / "no-mounts";
  const auto check = check_path(tmp.path() / "blog.db", options);
  CHECK(check.code == fwd::errc::not_litefs);
  CHECK(contains(check.message, tmp.path().string()));
  CHECK(contains(check.message, magic));
  CHECK(contains(check.message, "0x65735546"));
  CHECK(contains(check.message, "e.g. /litefs/blog.db"));
  CHECK_THROWS_AS(litefs::check_database_path(tmp.path() / "blog.db", options), fwd::error);
}

TEST_CASE("check_database_path with require_fuse off accepts a LiteFS simulation with .lag") {
  temp_dir tmp;
  const fs::path mount = tmp.path() / "litefs";
  write_file(mount / ".lag", "+000000000\n");
  litefs::path_check_options options;
  options.require_fuse = false;
  const auto check = check_path(mount / "blog.db", options);
  CHECK(check.ok());
  CHECK(check.mount == mount);
  CHECK(litefs::check_database_path(mount / "blog.db", options) == mount);
}

TEST_CASE("check_database_path with require_fuse off still rejects a directory without .lag") {
  temp_dir tmp;
  litefs::path_check_options options;
  options.require_fuse = false;
  options.mounts_file = tmp.path() / "no-mounts";
  const auto check = check_path(tmp.path() / "blog.db", options);
  CHECK(check.code == fwd::errc::not_litefs);
  CHECK(contains(check.message, "has no .lag: not a LiteFS mount"));
  CHECK(contains(check.message, tmp.path().string()));

  const auto missing_dir = check_path(tmp.path() / "nope/blog.db", options);
  CHECK(missing_dir.code == fwd::errc::not_litefs);
  CHECK(contains(missing_dir.message, "does not exist"));
}

TEST_CASE("check_database_path rejects empty and directory-like paths as bad_argument") {
  for (const char* p : {"", "/", "/litefs/", ".", "..", "/litefs/.."}) {
    INFO(p);
    const auto check = check_path(p);
    CHECK(check.code == fwd::errc::bad_argument);
    CHECK(contains(check.message, "/litefs/blog.db"));
  }
  CHECK(check_path(fs::path("a\0b"s)).code == fwd::errc::bad_argument);
}
