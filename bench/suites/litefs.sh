# bench/run litefs: sequential inserts on real LiteFS (2 nodes, FUSE): SQLite directly on the
# primary's mount (the floor) against fwd on the primary and fwd forwarded from the replica,
# read-your-writes off and on. Goals: litefs.p50_ratio.local_over_direct <= 1.10,
# litefs.p50_ratio.forwarded_over_direct <= 1.20, litefs.p50_ratio.forwarded_ryw_over_direct
# <= 2.0. Without LiteFS or FUSE the suite says why and reports nothing.

SUITE_TARGETS=(bench_litefs)

# 20 rounds of 50 inserts per system: 1,000 each, after 100 warm-up inserts.
LITEFS_ROUNDS=20
LITEFS_BLOCK=50
LITEFS_WARM_UP=100

suite_run() {
  local bin=$1
  [ -z "$("$bin/bench_litefs" check)" ] || return 0
  run_bench 300 "$bin/bench_litefs" "$LITEFS_ROUNDS" "$LITEFS_BLOCK" "$LITEFS_WARM_UP"
}

suite_table() {
  if [ -z "$(fig litefs.p50_us.direct)" ]; then
    local why
    why=$("$build_dir/bench/bench_litefs" check 2>&1 || true)
    echo "  skipped, real LiteFS is unavailable: ${why:-see the errors above}"
    return 0
  fi
  heading "sequential inserts on real LiteFS, one in flight, WAL, synchronous=${FWD_BENCH_LITEFS_SYNC:-NORMAL} ($(fig litefs.samples) each)"
  columns p50_us p99_us p50/direct p99/direct
  row "direct SQLite on the primary's mount" "" litefs.p50_us.direct litefs.p99_us.direct
  row "fwd on the primary (local)" "" litefs.p50_us.local litefs.p99_us.local \
    litefs.p50_ratio.local_over_direct litefs.p99_ratio.local_over_direct
  row "fwd from the replica, no read-your-writes" "" litefs.p50_us.forwarded litefs.p99_us.forwarded \
    litefs.p50_ratio.forwarded_over_direct litefs.p99_ratio.forwarded_over_direct
  row "fwd from the replica, read-your-writes" "" litefs.p50_us.forwarded_ryw \
    litefs.p99_us.forwarded_ryw litefs.p50_ratio.forwarded_ryw_over_direct \
    litefs.p99_ratio.forwarded_ryw_over_direct
  row "direct, then replica polled until caught up" "" litefs.p50_us.replicated \
    litefs.p99_us.replicated litefs.p50_ratio.replicated_over_direct \
    litefs.p99_ratio.replicated_over_direct
  heading "goals"
  row "local / direct p50 <= 1.10" "" litefs.p50_ratio.local_over_direct
  row "forwarded / direct p50 <= 1.20" "" litefs.p50_ratio.forwarded_over_direct
  row "forwarded, read-your-writes / direct <= 2.0" "" litefs.p50_ratio.forwarded_ryw_over_direct
}
