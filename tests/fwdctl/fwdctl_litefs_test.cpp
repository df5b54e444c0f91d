// fwdctl against fwd_node processes on real LiteFS (labels fwdctl, litefs): status names
// the lease holder, doctor passes on the FUSE mount and fails on LiteFS's data directory
// with the advice to use the mount. Skipped where real LiteFS cannot run.

#include <string>

#include "../support/temp_dir.hpp"
#include "fwdctl_process.hpp"
#include "litefs_nodes.hpp"

using namespace litefs_tests;
using fwdctl_test::run;

namespace {

struct litefs_with_fwd {
  litefs_cluster c{{.nodes = 2, .lease = fwd_test::lease_kind::static_lease}};
  std::unique_ptr<fwd_nodes> n;
  fwd_test::temp_dir dir;
  std::filesystem::path secret_file = fwdctl_test::write_file(dir.path() / "secret", fwdctl_test::cluster_secret);

  litefs_with_fwd() {
    c.start_all();
    create_database(c, 0, true);
    n = std::make_unique<fwd_nodes>(c);
    for (std::size_t i = 0; i < c.size(); ++i)
      n->extra_args.push_back({"--secret", fwdctl_test::cluster_secret, "--litefs-http",
                               std::to_string(c.http_port(i))});
    n->start_all();
  }
  std::string members() const {
    return "127.0.0.1:" + std::to_string(n->ports[0]) + ",127.0.0.1:" + std::to_string(n->ports[1]);
  }
};

}  // namespace

TEST_CASE("fwdctl status on real LiteFS: the lease holder is primary, the replica agrees") {
  REQUIRE_REAL_LITEFS();
  litefs_with_fwd f;
  const auto r = run({"status", "--members", f.members(), "--secret-file", f.secret_file.string()});
  INFO(r.output << f.n->outputs());
  CHECK(r.status == 0);
  CHECK_THAT(r.output, Catch::Contains("primary: " + f.c.hostname(0) + " (named by 2 of 2"));
  CHECK_THAT(r.output, Catch::Contains("primary") && Catch::Contains("replica"));
}

TEST_CASE("fwdctl doctor on real LiteFS: passes on the mount, fails on the data directory") {
  REQUIRE_REAL_LITEFS();
  litefs_with_fwd f;
  const std::vector<std::string> common = {"--members", f.members(), "--secret-file", f.secret_file.string(),
                                           "--litefs-http", "127.0.0.1:" + std::to_string(f.c.http_port(1))};
  std::vector<std::string> good = {"doctor", "--database", (f.c.mount(1) / db_name).string()};
  good.insert(good.end(), common.begin(), common.end());
  const auto ok = run(good);
  INFO(ok.output << f.n->outputs());
  CHECK(ok.status == 0);
  CHECK_THAT(ok.output, Catch::Contains("ok    database path") && Catch::Contains("checks passed"));

  std::vector<std::string> bad = {"doctor", "--database", (f.c.data_dir(1) / db_name).string()};
  bad.insert(bad.end(), common.begin(), common.end());
  const auto wrong = run(bad);
  INFO(wrong.output);
  CHECK(wrong.status == 1);
  CHECK_THAT(wrong.output, Catch::Contains("FAIL  database path") &&
                               Catch::Contains("what to do: open the database through LiteFS's FUSE mount"));
}
