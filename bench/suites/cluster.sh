# bench/run cluster: the whole cluster under a fixed offered load. Three fwd::node processes
# on the LiteFS simulation (replicating every commit), writers on every node issuing
# single-row inserts on a fixed schedule (open loop), latency from each write's scheduled
# time; every load with fwd::durability::none() and replicas(1). Prints the table, saves it
# to build/release/bench/cluster.txt and plots latency against load (gnuplot) to
# build/release/bench/cluster.png. See bench/README.md.

SUITE_TARGETS=(bench_cluster)

# Total offered loads, writes/s, comma-separated; the window of each, seconds (scaled by
# FWD_BENCH_SECONDS).
CLUSTER_LOADS=${FWD_BENCH_CLUSTER_LOADS:-1000,2000,5000,10000,20000}
CLUSTER_WINDOW=4.0
# FWD_BENCH_CLUSTER_LITEFS=1: on real LiteFS (the tests' fixture) instead of the simulation;
# the same keys, the table and plot in cluster-litefs.{txt,png}.
if [ "${FWD_BENCH_CLUSTER_LITEFS:-0}" = 1 ]; then
  CLUSTER_BACKEND=(litefs)
  CLUSTER_ON="real LiteFS"
  CLUSTER_OUT=cluster-litefs
else
  CLUSTER_BACKEND=()
  CLUSTER_ON="the LiteFS simulation"
  CLUSTER_OUT=cluster
fi

suite_run() {
  local bin=$1
  # The plot needs gnuplot: installed with the other benchmark packages when absent.
  if ! command -v gnuplot >/dev/null; then
    echo "bench: gnuplot is missing, installing the benchmark packages (tools/bootstrap)" >&2
    FWD_BOOTSTRAP_BENCH=1 "$root/tools/bootstrap" >&2 ||
      echo "bench: could not install gnuplot; the table is printed without its plot" >&2
  fi
  run_bench 300 "$bin/bench_cluster" "${CLUSTER_BACKEND[@]}" "$CLUSTER_WINDOW" "$CLUSTER_LOADS"
}

# The loads measured, in increasing order (from the keys cluster.tput.<load>.none).
cluster_loads() {
  local key
  for key in "${figure_order[@]}"; do
    [[ $key =~ ^cluster\.tput\.([0-9]+)\.none$ ]] && echo "${BASH_REMATCH[1]}"
  done | sort -n
}

cluster_table() {
  local load s label
  printf '\n  load average after the run (other work on the machine moves every figure): %s\n' \
    "$(cut -d' ' -f1-3 /proc/loadavg)"
  for s in none replicas1; do
    if [ $s = none ]; then
      label="fwd::durability::none()"
    else
      label="fwd::durability::replicas(1)"
    fi
    heading "$label: 3 nodes on $CLUSTER_ON, writers on every node, open loop (latency from the scheduled send)"
    columns "done/s" p50_ms p99_ms p999_ms max_ms failed rows/commit
    for load in $(cluster_loads); do
      row "$load writes/s offered" "" "cluster.tput.$load.$s" "cluster.p50_ms.$load.$s" \
        "cluster.p99_ms.$load.$s" "cluster.p999_ms.$load.$s" "cluster.max_ms.$load.$s" \
        "cluster.failed.$load.$s" "cluster.rows_per_commit.$load.$s"
    done
  done
}

# cluster_plot <png>: p50 and p99 against the offered load, both durability settings (log
# scales), beside achieved against offered throughput.
cluster_plot() {
  local png=$1 data load loads
  data="${png%.png}.dat"
  loads=$(cluster_loads)
  {
    echo "# offered none_p50 none_p99 replicas1_p50 replicas1_p99 none_done replicas1_done (ms, writes/s)"
    for load in $loads; do
      echo "$load $(fig "cluster.p50_ms.$load.none") $(fig "cluster.p99_ms.$load.none")" \
        "$(fig "cluster.p50_ms.$load.replicas1") $(fig "cluster.p99_ms.$load.replicas1")" \
        "$(fig "cluster.tput.$load.none") $(fig "cluster.tput.$load.replicas1")"
    done
  } >"$data"
  gnuplot <<EOF
set terminal pngcairo size 1400,560 font ",11"
set output "$png"
set multiplot layout 1,2 title "fwd, 3 nodes on $CLUSTER_ON, writers on every node, open loop ($(date -u +%Y-%m-%d), $(nproc) cores)"
set logscale xy
set xrange [$(head -1 <<<"$loads")/1.5:$(tail -1 <<<"$loads")*1.5]
set grid
set key top left
set xlabel "offered load (writes/s, all nodes)"
set ylabel "latency from scheduled send (ms)"
set title "latency (no point where too many writes failed for that percentile: see the table)"
plot "$data" using 1:2 with linespoints lw 2 pt 7 lc rgb "#1f77b4" title "none() p50", \
     "$data" using 1:3 with linespoints lw 2 pt 7 lc rgb "#1f77b4" dt 2 title "none() p99", \
     "$data" using 1:4 with linespoints lw 2 pt 5 lc rgb "#d62728" title "replicas(1) p50", \
     "$data" using 1:5 with linespoints lw 2 pt 5 lc rgb "#d62728" dt 2 title "replicas(1) p99"
set ylabel "completed writes/s (all nodes)"
set title "throughput"
plot "$data" using 1:1 with lines lc "gray" title "offered", \
     "$data" using 1:6 with linespoints lw 2 pt 7 lc rgb "#1f77b4" title "none()", \
     "$data" using 1:7 with linespoints lw 2 pt 5 lc rgb "#d62728" title "replicas(1)"
unset multiplot
EOF
}

suite_table() {
  local out="$build_dir/bench/$CLUSTER_OUT" key
  cluster_table | tee "$out.txt"
  for key in "${figure_order[@]}"; do echo "BENCH $key ${figures[$key]}"; done >>"$out.txt"
  if [ -z "$(cluster_loads)" ]; then
    return 0
  elif ! command -v gnuplot >/dev/null; then
    printf '\n  table: %s (no plot: gnuplot is not installed)\n' "$out.txt"
  elif cluster_plot "$out.png" >&2; then
    printf '\n  table: %s\n  plot:  %s\n' "$out.txt" "$out.png"
  else
    printf '\n  table: %s (gnuplot failed, no plot)\n' "$out.txt"
  fi
}
