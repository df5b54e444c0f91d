// The blog over fwd's LiteFS simulation (tests/sim), for the tests: its SQLite VFS makes
// replicas refuse writes as LiteFS does, and its mounts are plain directories (no FUSE).
#include "litefs_sim.hpp"

namespace blog {
bool prepare_litefs() {
  fwd_sim::install_vfs();
  return true;
}
}  // namespace blog
