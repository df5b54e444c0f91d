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
  heading "sequential inserts on real LiteFS, 2 nodes, one in flight, WAL, synchronous=${FWD_BENCH_LITEFS_SYNC:-NORMAL} ($(fig litefs.samples) each)"
  columns p50_us p99_us p50/direct p99/direct
  row "direct SQLite on the primary's mount" "" litefs.p50_us.direct litefs.p99_us.direct
  row "fwd on the primary" "" litefs.p50_us.local litefs.p99_us.local \
    litefs.p50_ratio.local_over_direct litefs.p99_ratio.local_over_direct
  row "fwd from the replica" "" litefs.p50_us.forwarded litefs.p99_us.forwarded \
    litefs.p50_ratio.forwarded_over_direct litefs.p99_ratio.forwarded_over_direct
  row "fwd from the replica, read-your-writes" "" litefs.p50_us.forwarded_ryw \
    litefs.p99_us.forwarded_ryw litefs.p50_ratio.forwarded_ryw_over_direct \
    litefs.p99_ratio.forwarded_ryw_over_direct
  row "fwd on the primary, replicas(1)" "" litefs.p50_us.local_durable litefs.p99_us.local_durable \
    litefs.p50_ratio.local_durable_over_direct litefs.p99_ratio.local_durable_over_direct
  row "fwd from the replica, replicas(1)" "" litefs.p50_us.forwarded_durable \
    litefs.p99_us.forwarded_durable litefs.p50_ratio.forwarded_durable_over_direct \
    litefs.p99_ratio.forwarded_durable_over_direct
  heading "durable acknowledgement (p50 ratios)"
  row "replicas(1) / none(), on the primary" "" litefs.p50_ratio.local_durable_over_local
  row "replicas(1) / none(), from the replica" "" litefs.p50_ratio.forwarded_durable_over_forwarded
  row "replicas(1) / read-your-writes" "" litefs.p50_ratio.forwarded_durable_over_forwarded_ryw
  heading "where the time goes (no fwd, one thread)"
  row "direct + LiteFS replication to the replica" "" litefs.p50_us.replicated \
    litefs.p99_us.replicated litefs.p50_ratio.replicated_over_direct \
    litefs.p99_ratio.replicated_over_direct
  row "direct + fwd's dedup SQL" "" litefs.p50_us.direct_dedup litefs.p99_us.direct_dedup \
    litefs.p50_ratio.direct_dedup_over_direct litefs.p99_ratio.direct_dedup_over_direct
  row "direct + dedup SQL, time-ordered ids" "" litefs.p50_us.direct_dedup_ordered \
    litefs.p99_us.direct_dedup_ordered litefs.p50_ratio.direct_dedup_ordered_over_direct \
    litefs.p99_ratio.direct_dedup_ordered_over_direct
  row "direct + dedup SQL + writer's mount reads" "" litefs.p50_us.direct_writer \
    litefs.p99_us.direct_writer litefs.p50_ratio.direct_writer_over_direct \
    litefs.p99_ratio.direct_writer_over_direct
  row "fwd on the primary / the line above" "" litefs.p50_ratio.local_over_direct_writer
  row "direct, before the fwd nodes start" "" litefs.p50_us.direct_alone litefs.p99_us.direct_alone \
    litefs.p50_ratio.direct_alone_over_direct
  row "direct / direct before the nodes start" "" litefs.p50_ratio.direct_over_direct_alone
  row "fwd on the primary / the line above" "" litefs.p50_ratio.local_over_direct_alone
  row "read-your-writes / LiteFS replication" "" litefs.p50_ratio.forwarded_ryw_over_replicated
  heading "goals (p50 over direct)"
  row "fwd on the primary <= 1.10" "" litefs.p50_ratio.local_over_direct
  row "fwd from the replica <= 1.20" "" litefs.p50_ratio.forwarded_over_direct
  row "... with read-your-writes <= 2.0" "" litefs.p50_ratio.forwarded_ryw_over_direct
  heading "WAL frames per COMMIT (pages written to LiteFS)"
  columns frames
  row "direct" "" litefs.wal_frames.direct
  row "direct + dedup SQL" "" litefs.wal_frames.direct_dedup
  row "direct + dedup SQL, time-ordered ids" "" litefs.wal_frames.direct_dedup_ordered
  row "direct + dedup SQL + writer's mount reads" "" litefs.wal_frames.direct_writer
}
