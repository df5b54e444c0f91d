# bench/run discovery: finding the primary (cached and cold) and one DNS membership poll.
# Goals: discovery.cached_ns <= 50; discovery.cold_ms.parallel <= probe deadline + 5 ms.

SUITE_TARGETS=(bench_discovery)

# The deadline of one probe in the cold discovery rounds, milliseconds.
DISCOVERY_PROBE_DEADLINE_MS=100
DISCOVERY_ROUNDS=5

suite_run() {
  local bin=$1
  local round
  # Three short runs of the in-process figures: bench/run reports the median of each.
  for round in 1 2 3; do run_bench 30 "$bin/bench_discovery" cached; done
  run_bench 40 "$bin/bench_discovery" cold "$DISCOVERY_PROBE_DEADLINE_MS" "$DISCOVERY_ROUNDS"
  run_bench 30 "$bin/bench_discovery" dns
}

suite_derive() {
  # The goal's bound, and the margin left under it (positive: met).
  local d
  d=$(fig discovery.probe_deadline_ms)
  [ -n "$d" ] || return 0
  echo "BENCH discovery.cold_goal_ms.parallel $((d + 5))"
  [ -n "$(fig discovery.cold_ms.parallel)" ] &&
    awk -v b="$((d + 5))" -v v="$(fig discovery.cold_ms.parallel)" \
      'BEGIN { printf "BENCH discovery.cold_margin_ms.parallel %.2f\n", b - v }'
  [ -n "$(fig discovery.cached_ns)" ] &&
    awk -v v="$(fig discovery.cached_ns)" 'BEGIN { printf "BENCH discovery.cached_margin_ns %.1f\n", 50 - v }'
  return 0
}

# goal_row <label> <key> <bound> : the figure, the bound and "met"/"MISSED".
goal_row() {
  local v
  v=$(fig "$2")
  printf '  %-38s %12s %12s %12s\n' "$1" "${v:-n/a}" "$3" \
    "$( [ -n "$v" ] && awk -v v="$v" -v b="$3" 'BEGIN { print (v <= b) ? "met" : "MISSED" }' || echo n/a)"
}

suite_table() {
  heading "cached lookup (in process, one thread; load average $(cut -d' ' -f1-3 /proc/loadavg))"
  columns median fastest
  row "finder->cached()" "ns/call" discovery.cached_ns discovery.cached_ns_best
  row "  steady_clock::now() alone, for scale" "ns/call" discovery.clock_read_ns
  row "  cached() over the clock read (paired)" "" discovery.cached_ratio.over_clock_read
  row "async_find() served from the cache" "ns/call" discovery.cached_find_ns
  heading "cold discovery: 16 members, 1 black hole, probe deadline $(fig discovery.probe_deadline_ms) ms (median of rounds)"
  columns parallel "one by one" ratio
  row "local role unknown: hear from all" "ms" discovery.cold_ms.parallel discovery.cold_ms.sequential \
    discovery.cold_ratio.sequential_over_parallel
  row "  servers that answered (of 15)" "" discovery.cold_answers.parallel discovery.cold_answers.sequential
  row "local .primary names the primary" "ms" discovery.cold_ms.parallel_named
  row "one by one, hole first: found (1/0)" "" discovery.cold_found.sequential_hole_first
  row "  probe rounds it ran" "" discovery.cold_rounds.sequential_hole_first
  heading "DNS: one membership poll (A, 16 records) against a local dnsmasq"
  columns p50 p99
  row "async_resolve_once" "us" dns.resolve_us dns.resolve_p99_us
  heading "goals"
  columns value bound result
  goal_row "cached lookup <= 50 ns (median)" discovery.cached_ns 50
  goal_row "  the same, fastest batch" discovery.cached_ns_best 50
  goal_row "parallel cold <= deadline + 5 ms" discovery.cold_ms.parallel "$(fig discovery.cold_goal_ms.parallel)"
}
