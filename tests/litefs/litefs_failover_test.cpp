// fwd on real LiteFS with the consul lease (the fixture's Consul stand-in): failover after
// the primary's death, and a planned handoff (POST /promote). Forwarded writes succeed
// again within 1 s of LiteFS promoting the new primary: the role is read by the node's
// litefs::monitor without the kernel's cached root mode (stale for up to 60 s after a role
// change; with it these writes were refused for about 60 s). Also: every acknowledged
// write exactly once, no survivor reads primary during the outage, and the data-directory
// mistake names the right mount when several LiteFS mounts exist.

#include <poll.h>
#include <sys/stat.h>

#include "litefs_nodes.hpp"

namespace {

// The mount root's mode as stat() shows it (the kernel's cached attribute, what fwd's role
// check reads) and the database file's mode (0666 on the primary, 0444 on a replica; not
// cached). Not statx(AT_STATX_FORCE_SYNC): it would refresh the cached root for fwd too.
std::string modes(const std::filesystem::path& mount) {
  struct stat root {}, db {};
  char text[96];
  const int a = ::stat(mount.c_str(), &root);
  const int b = ::stat((mount / db_name).c_str(), &db);
  std::snprintf(text, sizeof text, "root %04o, %s %04o",
                a == 0 ? static_cast<unsigned>(root.st_mode & 07777) : 0u, db_name.c_str(),
                b == 0 ? static_cast<unsigned>(db.st_mode & 07777) : 0u);
  return text;
}

// Appends from `from` with a fresh seq per attempt until one is acknowledged or `cap`
// passes. Acknowledged seqs go to `acked`, refused ones to `refused`.
std::optional<double> write_until_ok(fwd_nodes& n, std::size_t from, const std::string& writer,
                                     int& seq, std::vector<int>& acked, std::vector<int>& refused,
                                     std::chrono::milliseconds cap, std::string& last_error) {
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < cap) {
    const int s = ++seq;
    // Read-your-writes off: this measures when the new primary accepts the write. On a
    // demoted primary, its own copy catches up only once its LiteFS reconnects as a
    // replica (LiteFS's reconnect delay, about 1 s): the caller checks that separately.
    const auto r = n.append(from, writer, s, 1500, /*ryw=*/false);
    if (r.category == 0) {
      acked.push_back(s);
      return ms_since(start);
    }
    refused.push_back(s);
    last_error = r.detail;
  }
  return std::nullopt;
}

// Every acknowledged seq exactly once, every refused one at most once, on each running node.
void check_exactly_once(litefs_cluster& c, const std::string& writer, const std::vector<int>& acked,
                        const std::vector<int>& refused) {
  for (std::size_t i = 0; i < c.size(); ++i) {
    if (!c.running(i)) continue;
    INFO("mount " << c.mount(i));
    for (int s : acked) {
      INFO("acknowledged " << writer << " " << s);
      CHECK(cli_count(c, i, "writer = '" + writer + "' AND seq = " + std::to_string(s)) == 1);
    }
    for (int s : refused) {
      INFO("refused " << writer << " " << s);
      CHECK(cli_count(c, i, "writer = '" + writer + "' AND seq = " + std::to_string(s)) <= 1);
    }
  }
}

}  // namespace

TEST_CASE("real LiteFS consul lease: the primary dies and a survivor is promoted - forwarded "
          "writes then succeed exactly once and no replica reads primary meanwhile") {
  REQUIRE_REAL_LITEFS();
  litefs_cluster c({.nodes = 3, .lease = fwd_test::lease_kind::consul});
  c.start_all();
  REQUIRE(c.is_primary(0));
  create_database(c, 0, true);
  fwd_nodes n(c);
  n.start_all();
  INFO(n.outputs());

  std::vector<int> acked, refused;
  int seq = 0;
  for (int k = 0; k < 5; ++k) {
    const auto r = n.append(1, "w", ++seq);
    INFO(r.detail);
    REQUIRE(r.category == 0);
    acked.push_back(seq);
  }
  // LiteFS replicates asynchronously: a failover may lose what the primary had not
  // shipped. This test is about fwd, so the survivors have everything before the kill.
  REQUIRE(c.wait_caught_up(0, db_name, 10s));

  // Sample the survivors' role while no primary exists: never `primary`.
  std::atomic<bool> sampling{true};
  std::atomic<int> samples{0}, primary_while_none{0};
  std::mutex seen_mutex;
  std::string seen;
  std::thread sampler([&] {
    while (sampling) {
      const bool none_before = !c.is_primary(1) && !c.is_primary(2);
      fwd::litefs::role r1 = fwd::litefs::current_role(c.mount(1));
      fwd::litefs::role r2 = fwd::litefs::current_role(c.mount(2));
      const bool none_after = !c.is_primary(1) && !c.is_primary(2);
      ::poll(nullptr, 0, 2);  // a sampling rate (2 cores are shared), not a wait for an event
      if (!(none_before && none_after)) continue;
      samples += 2;
      for (auto* r : {&r1, &r2}) {
        if (r->kind == fwd::litefs::role_kind::primary) {
          ++primary_while_none;
          std::lock_guard lock(seen_mutex);
          seen = r->reason;
        }
      }
    }
  });

  const auto killed = std::chrono::steady_clock::now();
  n.kill(0);
  c.kill(0);
  const auto promoted = c.wait_primary(20s, 0);
  const double promoted_ms = ms_since(killed);
  REQUIRE(promoted);
  const std::size_t survivor = *promoted == 1 ? 2 : 1;
  const std::string modes_at_promotion = modes(c.mount(*promoted));

  // Writes from the survivor that is still a replica: forwarded to the new primary.
  std::string last_error;
  const auto ok_after = write_until_ok(n, survivor, "w", seq, acked, refused, 90s, last_error);
  const double refused_ms = ms_since(killed);
  {
    const int ryw_seq = ++seq;
    const auto r = n.append(survivor, "w", ryw_seq, 10000, /*ryw=*/true);
    INFO(r.detail);
    CHECK(r.category == 0);
    (r.category == 0 ? acked : refused).push_back(ryw_seq);
  }
  sampling = false;
  sampler.join();
  std::printf("real LiteFS failover (TTL 2s, lock-delay 500ms): %s promoted %.0f ms after the "
              "kill; forwarded writes refused for %.0f ms (%zu refused calls, last: %s); "
              "%d role samples, %d read primary; new primary at promotion: %s\n",
              c.hostname(*promoted).c_str(), promoted_ms, refused_ms, refused.size(),
              last_error.substr(0, 120).c_str(), samples.load(), primary_while_none.load(),
              modes_at_promotion.c_str());
  std::fflush(stdout);
  INFO("refused for " << refused_ms << " ms; last error: " << last_error);
  {
    std::lock_guard lock(seen_mutex);
    INFO("a survivor read primary with no primary elected: " << seen);
    CHECK(primary_while_none == 0);
  }
  CHECK(samples > 0);
  REQUIRE(ok_after.has_value());
  // Bounded by the lease, generously: TTL 2 s + lock-delay 0.5 s + reconnects, not the
  // kernel's 60 s attribute cache.
  CHECK(refused_ms < 20000);
  CHECK(refused_ms - promoted_ms < 1000);  // accepted within 1 s of LiteFS promoting it

  for (int k = 0; k < 5; ++k) {
    const auto r = n.append(survivor, "w", ++seq);
    INFO(r.detail);
    CHECK(r.category == 0);
    (r.category == 0 ? acked : refused).push_back(seq);
  }
  REQUIRE(c.wait_caught_up(*promoted, db_name, 10s));
  check_exactly_once(c, "w", acked, refused);
  CHECK(cli_count(c, *promoted, "ran_on = 'node1' AND seq > 5") == 0);
}

TEST_CASE("real LiteFS consul lease: planned handoff with POST /promote - forwarded writes "
          "then run on the new primary") {
  REQUIRE_REAL_LITEFS();
  litefs_cluster c({.nodes = 2, .lease = fwd_test::lease_kind::consul});
  c.start_all();
  REQUIRE(c.is_primary(0));
  create_database(c, 0, false);
  fwd_nodes n(c);
  n.start_all();
  INFO(n.outputs());

  std::vector<int> acked, refused;
  int seq = 0;
  for (int k = 0; k < 3; ++k) {
    const auto r = n.append(1, "h", ++seq);
    INFO(r.detail);
    REQUIRE(r.category == 0);
    acked.push_back(seq);
  }
  REQUIRE(c.wait_caught_up(0, db_name, 10s));

  const auto asked = std::chrono::steady_clock::now();
  REQUIRE(c.promote(1));
  REQUIRE(c.wait_primary(10s, 0) == std::optional<std::size_t>(1));
  const double handoff_ms = ms_since(asked);
  const std::string modes_at_promotion = modes(c.mount(1));

  // Node 0, now a replica, forwards to node 1.
  std::string last_error;
  const auto ok_after = write_until_ok(n, 0, "h", seq, acked, refused, 90s, last_error);
  const double refused_ms = ms_since(asked);
  {
    // And with read-your-writes: acknowledged once node 0's own copy shows it.
    const int ryw_seq = ++seq;
    const auto r = n.append(0, "h", ryw_seq, 10000, /*ryw=*/true);
    INFO(r.detail);
    CHECK(r.category == 0);
    (r.category == 0 ? acked : refused).push_back(ryw_seq);
  }
  std::printf("real LiteFS planned handoff: node2 primary %.0f ms after POST /promote; forwarded "
              "writes refused for %.0f ms (%zu refused calls, last: %s); new primary at promotion: "
              "%s\n",
              handoff_ms, refused_ms, refused.size(), last_error.substr(0, 120).c_str(),
              modes_at_promotion.c_str());
  std::fflush(stdout);
  INFO("refused for " << refused_ms << " ms; last error: " << last_error);
  REQUIRE(ok_after.has_value());
  CHECK(refused_ms < 20000);
  CHECK(refused_ms - handoff_ms < 1000);  // accepted within 1 s of LiteFS promoting it
  for (int k = 0; k < 3; ++k) {
    const auto r = n.append(0, "h", ++seq);
    INFO(r.detail);
    CHECK(r.category == 0);
    CHECK_FALSE(r.ran_locally);
    (r.category == 0 ? acked : refused).push_back(seq);
  }
  REQUIRE(c.wait_caught_up(1, db_name, 10s));
  check_exactly_once(c, "h", acked, refused);
  CHECK(cli_count(c, 1, "seq > 3 AND ran_on = 'node1'") == 0);
}

TEST_CASE("real LiteFS: with several LiteFS mounts the data-directory mistake suggests the "
          "mount of that LiteFS") {
  REQUIRE_REAL_LITEFS();
  // With several LiteFS mounts, the suggestion names the mount that belongs to the data
  // directory that was hit, not the first LiteFS mount in /proc/self/mounts: the cluster
  // mounted second checks that.
  litefs_cluster first({.nodes = 1, .lease = fwd_test::lease_kind::static_lease});
  first.start_all();
  litefs_cluster second({.nodes = 1, .lease = fwd_test::lease_kind::static_lease});
  second.start_all();
  for (litefs_cluster* c : {&first, &second}) {
    REQUIRE(sqlite_cli(c->mount(0) / db_name, "PRAGMA application_id=0;").rfind("ERROR", 0) != 0);
    const auto r = fwd_test::check_path(c->data_dir(0) / db_name);
    INFO(r.message);
    CHECK(r.code == fwd::errc::misconfigured_mount);
    CHECK(r.message.find((c->mount(0) / db_name).string()) != std::string::npos);
  }
}
