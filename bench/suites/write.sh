# bench/run write: single-row inserts (a small indexed table) forwarded by fwd::node from two
# replica processes to the primary process over the LiteFS simulation, against the same
# inserts on the primary, one transaction each, and on the primary with group commit; then,
# with the simulation replicating every commit, the forwarded inserts with durability none()
# and replicas(1) (the primary acknowledges once a replica has reported the commit); then
# the forwarded inserts with read-your-writes on and off, the simulation replicating.
# Beside their limits: fwd's group commit against plain SQLite committing the same rows in
# batches of the size fwd reached; one caller forwarded from a replica against the same
# write through fwd on the primary; and plain SQLite with and without the simulation's VFS
# shim (what the simulation costs, apart from fwd).
# Goals: write.tput_ratio.forwarded_over_local.64 >= 1.0,
#        write.tput_ratio.forwarded_over_group_commit.64 >= 0.95,
#        write.tput_ratio.group_commit_over_raw_batches.64 >= 0.5,
#        write.p50_ratio.sequential_forwarded_over_local <= 1.2,
#        write.tput_ratio.forwarded_ryw_over_forwarded.64 >= 0.8.

SUITE_TARGETS=(bench_write)

WRITE_ROUNDS=3

# One program run: the cluster (three node processes) starts once, then every system is
# measured in WRITE_ROUNDS interleaved rounds (2 s windows); the program prints the ratios of
# each round itself, bench/run reports the median per key.
suite_run() {
  local bin=$1
  run_bench 300 "$bin/bench_write" "$WRITE_ROUNDS" 2.0
}

suite_table() {
  heading "single-row inserts, 64 concurrent callers, WAL, synchronous=${FWD_BENCH_WRITE_SYNC:-NORMAL}"
  columns rows/s p50_ms p99_ms rows/commit
  row "forwarded from 2 replicas (group commit)" "" write.tput.forwarded.64 write.p50_ms.forwarded.64 \
    write.p99_ms.forwarded.64 write.rows_per_commit.forwarded.64
  row "on the primary, one transaction each" "" write.tput.local_single_txn.64 \
    write.p50_ms.local_single_txn.64 write.p99_ms.local_single_txn.64 \
    write.rows_per_commit.local_single_txn.64
  row "on the primary, group commit" "" write.tput.local_group_commit.64 \
    write.p50_ms.local_group_commit.64 write.p99_ms.local_group_commit.64 \
    write.rows_per_commit.local_group_commit.64
  row "plain SQLite, 1 writer, 1 txn each" "" write.tput.plain_sqlite_one_writer
  row "plain SQLite, batches of fwd's size" "" write.tput.raw_batches.64
  heading "one caller, one write at a time (durability none())"
  columns rows/s p50_ms p99_ms
  row "forwarded from a replica" "" write.tput.sequential_forwarded.1 \
    write.p50_ms.sequential_forwarded.1 write.p99_ms.sequential_forwarded.1
  row "through fwd on the primary" "" write.tput.sequential_local.1 \
    write.p50_ms.sequential_local.1 write.p99_ms.sequential_local.1
  heading "plain SQLite, 1 writer: the simulation's VFS shim against SQLite's unix VFS"
  columns shim unix shim/unix
  row "1 row per transaction" rows/s write.tput.plain_sqlite.sim_vfs.batch1 \
    write.tput.plain_sqlite.unix_vfs.batch1 write.tput_ratio.sim_vfs_over_unix_vfs.batch1
  row "64 rows per transaction" rows/s write.tput.plain_sqlite.sim_vfs.batch64 \
    write.tput.plain_sqlite.unix_vfs.batch64 write.tput_ratio.sim_vfs_over_unix_vfs.batch64
  heading "forwarded, the simulation replicating every commit"
  columns rows/s p50_ms p99_ms rows/commit
  row "durability none()" "" write.tput.forwarded_replicating.64 write.p50_ms.forwarded_replicating.64 \
    write.p99_ms.forwarded_replicating.64 write.rows_per_commit.forwarded_replicating.64
  row "durability replicas(1)" "" write.tput.forwarded_durable.64 write.p50_ms.forwarded_durable.64 \
    write.p99_ms.forwarded_durable.64 write.rows_per_commit.forwarded_durable.64
  heading "forwarded, read-your-writes on (as users run it) and off, the simulation replicating"
  columns rows/s p50_ms p99_ms rows/commit
  row "read_your_writes on" "" write.tput.forwarded_ryw.64 write.p50_ms.forwarded_ryw.64 \
    write.p99_ms.forwarded_ryw.64 write.rows_per_commit.forwarded_ryw.64
  row "read_your_writes off" "" write.tput.forwarded_ryw_off.64 write.p50_ms.forwarded_ryw_off.64 \
    write.p99_ms.forwarded_ryw_off.64 write.rows_per_commit.forwarded_ryw_off.64
  columns value
  row "replication: transactions per shipment" "" write.replication.transactions_per_shipment
  row "replication: pages per shipment" "" write.replication.pages_per_shipment
  row "replication: us per shipment" "" write.replication.us_per_shipment
  row "replication: whole copies" "" write.replication.snapshots
  heading "ratios (rows/s, paired within a round)"
  row "forwarded / primary, one txn each" "" write.tput_ratio.forwarded_over_local.64
  row "forwarded / primary, group commit" "" write.tput_ratio.forwarded_over_group_commit.64
  row "group commit / one txn each" "" write.tput_ratio.group_commit_over_single_txn.64
  row "group commit / plain SQLite batches" "" write.tput_ratio.group_commit_over_raw_batches.64
  row "one caller: forwarded / primary, p50" "" write.p50_ratio.sequential_forwarded_over_local
  row "replicas(1) / none(), rows/s" "" write.tput_ratio.durable_over_none.64
  row "replicas(1) / none(), p50" "" write.p50_ratio.durable_over_none.64
  row "read-your-writes on / off" "" write.tput_ratio.forwarded_ryw_over_forwarded.64
  heading "goals"
  row "forwarded / primary one txn each >= 1.0" "" write.tput_ratio.forwarded_over_local.64
  row "forwarded / group commit >= 0.95" "" write.tput_ratio.forwarded_over_group_commit.64
  row "group commit / plain SQLite batches >= 0.5" "" write.tput_ratio.group_commit_over_raw_batches.64
  row "one caller forwarded / primary p50 <= 1.2" "" write.p50_ratio.sequential_forwarded_over_local
  row "read-your-writes on / off >= 0.8" "" write.tput_ratio.forwarded_ryw_over_forwarded.64
}
