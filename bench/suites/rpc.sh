# bench/run rpc: fwd's RPC transport against a raw TCP ping-pong (the floor) and gRPC unary.
# Goals: rpc.p50_ratio.fwd_over_tcp <= 1.5, rpc.tput_ratio.fwd_over_grpc.64 >= 5.

SUITE_TARGETS=(bench_rpc_tcp bench_rpc_grpc bench_rpc_fwd)
SUITE_OPTIONAL_TARGETS=(bench_rpc_fwd)
RPC_DEPTHS=(1 16 64 256)

suite_run() {
  local bin=$1
  # Latency first, while nothing else has run: the three side by side.
  run_bench 60 "$bin/bench_rpc_tcp" latency
  run_bench 60 "$bin/bench_rpc_grpc" latency
  if have_target bench_rpc_fwd; then run_bench 60 "$bin/bench_rpc_fwd" latency; fi
  run_bench 90 "$bin/bench_rpc_grpc" throughput "${RPC_DEPTHS[@]}"
  if have_target bench_rpc_fwd; then run_bench 90 "$bin/bench_rpc_fwd" throughput "${RPC_DEPTHS[@]}"; fi
  run_bench 90 "$bin/bench_rpc_grpc" memory
  if have_target bench_rpc_fwd; then run_bench 90 "$bin/bench_rpc_fwd" memory; fi
}

suite_derive() {
  ratio rpc.p50_ratio.fwd_over_tcp rpc.p50_us.fwd rpc.p50_us.tcp
  ratio rpc.p99_ratio.fwd_over_tcp rpc.p99_us.fwd rpc.p99_us.tcp
  ratio rpc.p50_ratio.grpc_over_tcp rpc.p50_us.grpc rpc.p50_us.tcp
  local d
  for d in "${RPC_DEPTHS[@]}"; do
    ratio "rpc.tput_ratio.fwd_over_grpc.$d" "rpc.tput.fwd.$d" "rpc.tput.grpc.$d"
  done
}

suite_table() {
  heading "sequential calls, 64-byte payload, one in flight (microseconds)"
  columns fwd tcp grpc fwd/tcp
  row "p50 latency" "us" rpc.p50_us.fwd rpc.p50_us.tcp rpc.p50_us.grpc rpc.p50_ratio.fwd_over_tcp
  row "p99 latency" "us" rpc.p99_us.fwd rpc.p99_us.tcp rpc.p99_us.grpc rpc.p99_ratio.fwd_over_tcp
  heading "throughput, one connection, N calls in flight (calls/s)"
  columns fwd grpc fwd/grpc
  local d
  for d in "${RPC_DEPTHS[@]}"; do
    row "$d in flight" "calls/s" "rpc.tput.fwd.$d" "rpc.tput.grpc.$d" "rpc.tput_ratio.fwd_over_grpc.$d"
  done
  heading "server memory (RSS from /proc/<pid>/status)"
  columns fwd grpc
  row "per idle connection (of 1000)" "KiB" rpc.rss_kib_per_idle_conn rpc.rss_kib_per_idle_conn.grpc
  row "peak growth, 10,000 calls in flight" "KiB" rpc.rss_kib_10k_inflight rpc.rss_kib_10k_inflight.grpc
  heading "goals"
  row "p50 fwd/tcp <= 1.5" "" rpc.p50_ratio.fwd_over_tcp
  row "throughput fwd/grpc at 64 >= 5" "" rpc.tput_ratio.fwd_over_grpc.64
}
