# bench/run rpc: fwd's RPC transport against a raw TCP ping-pong (the floor) and gRPC unary.
# Goals: rpc.p50_ratio.fwd_over_tcp <= 1.3, rpc.p50_ratio.blocking_over_async <= 1.3,
# rpc.tput_ratio.fwd_over_grpc.64 >= 15.

SUITE_TARGETS=(bench_rpc_tcp bench_rpc_asio bench_rpc_grpc bench_rpc_fwd)
SUITE_OPTIONAL_TARGETS=(bench_rpc_fwd)
RPC_DEPTHS=(1 16 64 256)

RPC_ROUNDS=5

# Each system is measured in RPC_ROUNDS short rounds, interleaved, so that load from
# elsewhere on the machine hits all of them alike; bench/run reports the median per key.
# Ratios are taken within a round (figures measured seconds apart), then their median and
# spread ([min, max] of the rounds).
suite_run() {
  local bin=$1 round s d out tcp asio fwd grpc
  local fwd_here=0
  if have_target bench_rpc_fwd; then fwd_here=1; fi
  for round in $(seq "$RPC_ROUNDS"); do
    out=""
    for s in asio tcp grpc fwd; do
      [ $s != fwd ] || [ $fwd_here = 1 ] || continue
      out+=$(run_bench 60 "$bin/bench_rpc_$s" latency 0.6)$'\n'
    done
    echo "$out"
    tcp=$(value_of rpc.p50_us.tcp "$out")
    fwd=$(value_of rpc.p50_us.fwd "$out")
    ratio_of rpc.p50_ratio.fwd_over_tcp "$fwd" "$tcp"
    ratio_of rpc.p50_ratio.fwd_over_asio "$fwd" "$(value_of rpc.p50_us.asio "$out")"
    ratio_of rpc.p50_ratio.grpc_over_tcp "$(value_of rpc.p50_us.grpc "$out")" "$tcp"
    ratio_of rpc.p99_ratio.fwd_over_tcp "$(value_of rpc.p99_us.fwd "$out")" "$(value_of rpc.p99_us.tcp "$out")"
    ratio_of rpc.p50_ratio.fwd_telemetry_over_fwd "$(value_of rpc.p50_us.fwd_telemetry "$out")" "$fwd"
    ratio_of rpc.p50_ratio.blocking_over_async "$(value_of rpc.p50_us.fwd_blocking "$out")" "$fwd"
  done
  for round in $(seq "$RPC_ROUNDS"); do
    for d in "${RPC_DEPTHS[@]}"; do
      out=""
      for s in tcp grpc fwd; do
        [ $s != fwd ] || [ $fwd_here = 1 ] || continue
        out+=$(run_bench 60 "$bin/bench_rpc_$s" throughput "$d")$'\n'
      done
      echo "$out"
      ratio_of "rpc.tput_ratio.fwd_over_grpc.$d" "$(value_of "rpc.tput.fwd.$d" "$out")" \
        "$(value_of "rpc.tput.grpc.$d" "$out")"
    done
  done
  if [ $fwd_here = 1 ]; then run_bench 30 "$bin/bench_rpc_fwd" codec; fi
  run_bench 90 "$bin/bench_rpc_grpc" memory
  if [ $fwd_here = 1 ]; then run_bench 90 "$bin/bench_rpc_fwd" memory; fi
}

suite_table() {
  heading "sequential calls, 64-byte payload, one in flight (microseconds)"
  columns fwd tcp grpc fwd/tcp asio fwd/asio
  row "p50 latency" "us" rpc.p50_us.fwd rpc.p50_us.tcp rpc.p50_us.grpc rpc.p50_ratio.fwd_over_tcp \
    rpc.p50_us.asio rpc.p50_ratio.fwd_over_asio
  row "p99 latency" "us" rpc.p99_us.fwd rpc.p99_us.tcp rpc.p99_us.grpc rpc.p99_ratio.fwd_over_tcp rpc.p99_us.asio
  row "p50, fwd with telemetry hooks set" "us" rpc.p50_us.fwd_telemetry
  row "p50, fwd blocking call()" "us" rpc.p50_us.fwd_blocking
  row "  blocking / async_call, p50 (paired)" "" rpc.p50_ratio.blocking_over_async
  heading "throughput, one connection, N calls in flight (calls/s)"
  columns fwd grpc fwd/grpc tcp
  local d
  for d in "${RPC_DEPTHS[@]}"; do
    row "$d in flight" "calls/s" "rpc.tput.fwd.$d" "rpc.tput.grpc.$d" "rpc.tput_ratio.fwd_over_grpc.$d" "rpc.tput.tcp.$d"
  done
  row "64 in flight, fwd telemetry hooks set" "calls/s" rpc.tput.fwd_telemetry.64
  heading "fwd serialisation, in process (nanoseconds)"
  row "encode arguments / decode arguments" "ns" rpc.codec_ns.encode_args rpc.codec_ns.decode_args
  row "encode result / decode result" "ns" rpc.codec_ns.encode_result rpc.codec_ns.decode_result
  row "all four, one round trip" "ns" rpc.codec_ns.per_call
  row "one std::locale with a facet" "ns" rpc.codec_ns.locale_with_facet
  heading "server memory (RSS from /proc/<pid>/status)"
  columns fwd grpc
  row "per idle connection (of 1000)" "KiB" rpc.rss_kib_per_idle_conn rpc.rss_kib_per_idle_conn.grpc
  row "peak growth, 10,000 calls held" "KiB" rpc.rss_kib_10k_inflight rpc.rss_kib_10k_inflight.grpc
  row "peak growth, 10,000 calls sent at once" "KiB" rpc.rss_kib_10k_burst rpc.rss_kib_10k_burst.grpc
  heading "goals (ratios paired within a round: median, [min, max] of the rounds)"
  columns median "[min, max]" goal result
  goal "p50 fwd / tcp" rpc.p50_ratio.fwd_over_tcp "<=" 1.3
  goal "p50 blocking call() / async_call" rpc.p50_ratio.blocking_over_async "<=" 1.3
  goal "throughput fwd / grpc, 64 in flight" rpc.tput_ratio.fwd_over_grpc.64 ">=" 15
}
